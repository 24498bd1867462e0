"""Executors run attempts behind one interface (`base.Executor`): local processes under the attempt
supervisor (`local`, `supervised`, `supervisor`), containers on a Docker daemon (`docker`), and
Ray tasks on a cluster whose node agents host the local engine (`ray_cluster`, `ray_node`). Each
owns its mechanism and reports the same events with AWS's reason strings; none imports the engine
or the render workload."""
