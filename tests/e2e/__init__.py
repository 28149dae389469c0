"""End-to-end tests: several hosts in network namespaces, real etcd."""
