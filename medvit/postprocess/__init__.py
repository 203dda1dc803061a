"""Post-processing of network outputs: HoVer watershed to typed nuclei instances."""

from medvit.postprocess.hover import HoverResult, hover_instances, hover_postprocess, hv_maps, vote_types

__all__ = ["HoverResult", "hover_instances", "hover_postprocess", "hv_maps", "vote_types"]
