module github.com/patchagent/patchagent

go 1.26.8

require (
	github.com/coreos/go-iptables v0.8.0
	github.com/google/go-cmp v0.7.0
	go.uber.org/zap v1.28.0
	go.yaml.in/yaml/v3 v3.0.6
	golang.org/x/sys v0.50.0
)

require go.uber.org/multierr v1.10.0 // indirect
