"""The render zygote: a process that loaded Blender once and forks each render job from it.

`daemon` is the zygote itself (`python -m kiln.render.zygote.daemon`), `client` the job's side
(a thin process that hands its descriptors over and relays the exit), `worker` the forked render
process, `warm` which job may take a process kept warm, `paths` and `protocol` the socket
folder and the messages, and `cgroups` how a render joins and leaves its job's cgroups.
"""
