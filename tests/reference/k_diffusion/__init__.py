"""k-diffusion 0.0.16's sampling module (MIT), vendored as the samplers' test reference."""
