//go:build tools

// Package dendrite pins the Dendrite homeserver (Apache-2.0 at v0.13.8) that
// the interop scenarios in sytest-lite/interop_dendrite_test.go build and run
// as an independent federation peer. It is a nested module so that the main
// module's go.mod never depends on Dendrite or its gomatrixserverlib version.
package dendrite

import _ "github.com/matrix-org/dendrite/cmd/dendrite"
