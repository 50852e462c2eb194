"""The Slicer layer's logic that runs without Qt, so that it can be tested headless (pytest, slicer-core).

- interaction: slice-view geometry (view pixels -> voxels, oblique views refused) and the prompt state machine;
  numpy only
- controller: the effect's driver of the engine (one worker thread, jobs, events) and model availability;
  no slicer, qt or vtk
- bridge: numpy masks <-> segments through the Segment Editor's modify-by-labelmap path; MRML, no Qt

These live in a package rather than beside SAMSegment.py because Slicer loads every .py file at the top of a
scripted-module folder as a module and reports an error for files without a module class.
"""
