"""The Blender add-on (`kiln_blender/`, run inside Blender) and `kiln blender-addon`, which zips it."""
