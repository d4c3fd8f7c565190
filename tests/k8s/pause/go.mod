// The pause program (see main.go): no dependencies, its own module so that building it needs
// nothing but the standard library.
module fleetboard.invalid/tests/k8s/pause

go 1.24
