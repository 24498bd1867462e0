"""The Blender render workload: a program that runs inside Kiln (or AWS Batch) jobs.

`kiln-render render` renders one array child's slice of a .blend file's frames, `kiln-render
stitch` turns the frames into an MP4; `blend_header` counts frames without Blender and
`sample_scene` builds a demo scene. Like any outside program, this package never imports
`kiln.batch`: it only reads and writes storage URIs.
"""
