package redisstore

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/infergate/infergate/session"
)

// encodeEvent returns the ring element of m:
// {"s":seq,"k":kind,"n":"name","d":data} with data embedded as it is when it
// is valid JSON (what the transports send), else {"s":..,"k":..,"n":..,"b":"base64"}.
// Building it by hand keeps data byte for byte (json.RawMessage would be
// compacted) and costs one validation pass.
func encodeEvent(m session.Mirrored) []byte {
	name, _ := json.Marshal(m.Name) // a string always marshals
	b := make([]byte, 0, len(m.Data)+len(name)+48)
	b = append(b, `{"s":`...)
	b = strconv.AppendInt(b, m.Seq, 10)
	b = append(b, `,"k":`...)
	b = strconv.AppendInt(b, int64(m.Kind), 10)
	b = append(b, `,"n":`...)
	b = append(b, name...)
	if json.Valid(m.Data) {
		b = append(b, `,"d":`...)
		b = append(b, m.Data...)
	} else {
		raw, _ := json.Marshal(m.Data) // []byte marshals as base64
		b = append(b, `,"b":`...)
		b = append(b, raw...)
	}
	return append(b, '}')
}

// wireEvent is a ring element as decoded.
type wireEvent struct {
	S int64           `json:"s"`
	K int             `json:"k"`
	N string          `json:"n"`
	D json.RawMessage `json:"d"`
	B []byte          `json:"b"`
}

// decodeEvent parses a ring element written by encodeEvent.
func decodeEvent(b []byte) (session.Mirrored, error) {
	var w wireEvent
	if err := json.Unmarshal(b, &w); err != nil {
		return session.Mirrored{}, fmt.Errorf("ring element: %w", err)
	}
	m := session.Mirrored{Seq: w.S, Kind: session.EventKind(w.K), Name: w.N, Data: []byte(w.D)}
	if w.D == nil {
		m.Data = w.B
	}
	return m, nil
}
