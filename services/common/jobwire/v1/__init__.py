"""Generated protobuf and gRPC code for the jobwire v1 contract (do not edit: `make proto`)."""
