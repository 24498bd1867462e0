"""Attempts' output as CloudWatch Logs serves it: log streams, events, filter patterns.

One file per log stream under the data dir (`Settings.log_file`); `service` answers the Logs
operations the AWS CLI and boto3 call (`GetLogEvents`, `FilterLogEvents`, ...), `job_log` finds a
job's attempt log for Kiln's own `/kiln/v1/logs` route, and `events` reads a file as events.
"""
