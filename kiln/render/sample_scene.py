"""A small animated scene built in code, so the repository ships no .blend binary.

It is the render workload's demo and test input: a few coloured objects on a floor, a camera, a
sun and keyframed motion, set up to render in well under a second per frame on a laptop CPU
(Cycles, 320x180, 8 samples, no denoising). Cycles rather than Eevee because Eevee needs a GPU
context that headless CI machines lack.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

RESOLUTION = (320, 180)
SAMPLES = 8
FPS = 24


def write_sample_scene(path: Path, frames: int = 12, *, frame_start: int = 1, compress: bool = False) -> None:
    """Build the sample scene and save it at `path`.

    This replaces whatever the current Blender session holds (it starts from an empty factory
    scene), so call it in a process of its own. `compress=True` saves zstd-compressed as Blender's
    "Compress" option does.
    """
    if frames < 1:
        raise ValueError("a sample scene needs at least one frame")
    import bpy  # the 300 MB wheel is only loaded by code that renders or builds scenes

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.name = "Sample"
    _configure_render(scene, frame_start, frame_start + frames - 1)
    _add_objects(bpy, scene)
    _add_camera_and_light(bpy, scene)
    path.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(path), compress=compress, check_existing=False)


def _configure_render(scene: Any, frame_start: int, frame_end: int) -> None:
    scene.frame_start, scene.frame_end = frame_start, frame_end
    scene.frame_current = frame_start
    render = scene.render
    render.engine = "CYCLES"
    render.fps, render.fps_base = FPS, 1.0
    render.resolution_x, render.resolution_y = RESOLUTION
    render.resolution_percentage = 100
    render.image_settings.file_format = "PNG"
    render.image_settings.color_mode = "RGB"
    scene.cycles.device = "CPU"
    scene.cycles.samples = SAMPLES
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.use_denoising = False
    scene.cycles.max_bounces = 4


def _material(bpy: Any, name: str, colour: tuple[float, float, float]) -> Any:
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (*colour, 1.0)
    return material


def _add_object(bpy: Any, scene: Any, primitive: Any, name: str, colour: tuple[float, float, float]) -> Any:
    primitive()
    thing = bpy.context.active_object
    thing.name = name
    thing.data.materials.append(_material(bpy, name, colour))
    return thing


def _add_objects(bpy: Any, scene: Any) -> None:
    """A floor, a cube that travels and turns, a sphere that bounces, a torus that spins."""
    start, end = scene.frame_start, scene.frame_end
    mesh = bpy.ops.mesh
    floor = _add_object(bpy, scene, lambda: mesh.primitive_plane_add(size=12), "Floor", (0.8, 0.8, 0.75))
    floor.location = (0, 0, 0)
    cube = _add_object(bpy, scene, lambda: mesh.primitive_cube_add(size=1.2), "Cube", (0.8, 0.2, 0.1))
    _keyframes(cube, "location", {start: (-3, -1, 0.6), end: (3, -1, 0.6)})
    _keyframes(cube, "rotation_euler", {start: (0, 0, 0), end: (0, 0, math.pi)})
    sphere = _add_object(
        bpy,
        scene,
        lambda: mesh.primitive_uv_sphere_add(radius=0.6, segments=24, ring_count=12),
        "Ball",
        (0.1, 0.4, 0.8),
    )
    middle = (start + end) // 2
    _keyframes(sphere, "location", {start: (-1.8, 1.5, 0.6), middle: (-1.8, 1.5, 2.0), end: (-1.8, 1.5, 0.6)})
    torus = _add_object(
        bpy, scene, lambda: mesh.primitive_torus_add(major_radius=0.7, minor_radius=0.2), "Ring", (0.9, 0.7, 0.1)
    )
    torus.location = (1.8, 1.5, 0.9)
    _keyframes(torus, "rotation_euler", {start: (math.pi / 2, 0, 0), end: (math.pi / 2, 0, 2 * math.pi)})


def _keyframes(thing: Any, attribute: str, values: dict[int, tuple[float, float, float]]) -> None:
    for frame, value in values.items():
        setattr(thing, attribute, value)
        thing.keyframe_insert(data_path=attribute, frame=frame)


def _add_camera_and_light(bpy: Any, scene: Any) -> None:
    bpy.ops.object.camera_add(location=(0, -11, 5.5), rotation=(math.radians(66), 0, 0))
    scene.camera = bpy.context.active_object
    bpy.ops.object.light_add(type="SUN", location=(3, -3, 6), rotation=(math.radians(40), math.radians(20), 0))
    bpy.context.active_object.data.energy = 3.0
    world = bpy.data.worlds.new("Sky")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.45, 0.55, 0.7, 1.0)
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.6
    scene.world = world
