"""The one function of k_diffusion/utils.py that sampling.py uses (k-diffusion 0.0.16, MIT, see LICENSE).
The real utils imports torchvision, which must not be installed next to transformers here."""


def append_dims(x, target_dims):
    """Appends dimensions to the end of a tensor until it has target_dims dimensions."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f'input has {x.ndim} dims but target_dims is {target_dims}, which is less')
    return x[(...,) + (None,) * dims_to_append]
