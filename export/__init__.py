"""Export a VAE to the ONNX graphs and manifest that the sdlite runtime loads (needs torch and diffusers)."""
