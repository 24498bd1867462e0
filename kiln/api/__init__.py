"""The wire: AWS Batch REST-JSON and CloudWatch Logs JSON 1.1 routes and shapes from botocore's
models, the one error mapping, the front door (Host, Origin, content type), SigV4 and the HTTP
server's deadlines. It reaches the operations through small protocols and never imports them."""
