"""Stand-in for SimpleITK on the GPU benchmark machine (the real wheel is too large to carry): nnU-Net's 2D
natural-image path only imports it."""


def __getattr__(name):
    raise ImportError(f"SimpleITK.{name}: SimpleITK is not installed on this machine")
