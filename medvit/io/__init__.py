"""Medical image I/O with exact geometry: DICOM (files, folders, zips, multi-frame), NIfTI and 2D images.

Every reader returns a channel-first MONAI ``MetaTensor`` whose ``affine`` maps voxel indices to RAS
world coordinates; every writer is atomic and checks the grid it wrote.
"""

from medvit.io.dicom import list_series, read_dicom
from medvit.io.dicom_seg import write_dicom_seg
from medvit.io.image2d import read_image2d, write_png
from medvit.io.nifti import read_nifti, write_nifti
from medvit.io.reader import describe, read_image, sniff
from medvit.io.rtstruct import write_rtstruct

__all__ = [
    "describe",
    "list_series",
    "read_dicom",
    "read_image",
    "read_image2d",
    "read_nifti",
    "sniff",
    "write_dicom_seg",
    "write_nifti",
    "write_png",
    "write_rtstruct",
]
