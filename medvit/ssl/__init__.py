"""Self-supervised pre-training parts: masking, crops, the DINO/iBOT objective, the k-NN probe."""
