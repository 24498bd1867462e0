"""The AWS Batch wire protocol: routes, shapes, error mapping and the ASGI app."""
