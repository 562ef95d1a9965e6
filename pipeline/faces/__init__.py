"""Faces from any video: detection with five landmarks, alignment to the ArcFace template, tracking.

Parts talk in arrays (STYLE.md 13); only the ``crop`` stage and ``analyze`` write files.
"""
