"""xsha's gRPC contract: code generated from protos/ (see xsha_common.protogen)."""
