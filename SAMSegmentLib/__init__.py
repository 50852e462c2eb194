"""SAMSegment engine: Segment Anything family models on 3D medical volumes. Pure Python (torch, numpy, SimpleITK).

Never imports slicer, qt, ctk or vtk: the Slicer layer (SAMSegment/) calls into this package, not the reverse.
"""

__version__ = "0.1.0"
