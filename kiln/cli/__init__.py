"""The `kiln` command: the server and a few views; the AWS CLI does everything else."""
