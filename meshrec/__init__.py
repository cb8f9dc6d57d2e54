"""meshrec: 3D hand mesh reconstruction from a single RGB image.

Heavy or optional dependencies (pytorch3d, plotting) are imported only inside the
modules that need them, so ``import meshrec`` stays light.
"""

__version__ = "0.1.0"
