// Package web holds the static files that infergate serves, embedded in the binary so
// that serving them needs no build step: the browser demo page under demo/ (served at
// /demo/), and the API description under api/ (openapi.json and the interactive docs
// page served at /docs).
package web
