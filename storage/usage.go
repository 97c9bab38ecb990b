package storage

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/uptrace/bun"
)

// Usage is a user's usage report, the body of GET /v1/usage.
type Usage struct {
	TotalRequests      int64            `json:"total_requests"`
	SuccessfulRequests int64            `json:"successful_requests"`
	SuccessRate        float64          `json:"success_rate"`         // percent of requests with status 200, 2 places
	AvgResponseTimeMS  float64          `json:"avg_response_time_ms"` // mean latency_ms of all requests, 2 places
	ByTransport        map[string]int64 `json:"by_transport"`         // always has "post", "ws" and "sse"
	Since              *time.Time       `json:"since"`                // nil: all time
}

// Usage returns the usage of user userID since a time (inclusive; the zero
// time means all time). A request is one row of inference_logs, successful
// when its status is 200. The numbers come from one aggregate query over the
// (user_id, created_at) index; no row is loaded. since is compared at
// microsecond precision, as times are stored.
//
// When logs were pruned (see PruneLogs), the report starts at the later of
// since and the retention horizon, and Since says so: the numbers are exact
// for the window they claim, even while a prune is deleting rows, as the
// horizon and the rows are read in one snapshot. Since is nil when the
// report covers all time.
func (db *DB) Usage(ctx context.Context, userID int64, since time.Time) (*Usage, error) {
	var rows []usageRow
	u := &Usage{ByTransport: map[string]int64{TransportPOST: 0, TransportWS: 0, TransportSSE: 0}}
	// A deferred (read-only) transaction: one snapshot for both reads.
	err := db.Bun.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		horizon, err := logHorizon(ctx, tx)
		if err != nil {
			return err
		}
		if horizon.After(since) {
			since = horizon
		}
		return usageQuery(tx, userID, since).Scan(ctx, &rows)
	})
	if err != nil {
		return nil, fmt.Errorf("storage: usage: %w", err)
	}
	if !since.IsZero() {
		s := utc(since)
		u.Since = &s
	}
	var latency float64
	for _, r := range rows {
		u.ByTransport[r.Transport] += r.N
		u.TotalRequests += r.N
		u.SuccessfulRequests += r.OK
		latency += r.Latency
	}
	if u.TotalRequests > 0 {
		u.SuccessRate = round2(100 * float64(u.SuccessfulRequests) / float64(u.TotalRequests))
		u.AvgResponseTimeMS = round2(latency / float64(u.TotalRequests))
	}
	return u, nil
}

type usageRow struct {
	Transport string  `bun:"transport"`
	N         int64   `bun:"n"`
	OK        int64   `bun:"ok"`
	Latency   float64 `bun:"latency"`
}

// usageQuery counts the requests, successes and total latency of a user per
// transport.
func usageQuery(idb bun.IDB, userID int64, since time.Time) *bun.SelectQuery {
	q := idb.NewSelect().
		TableExpr("inference_logs").
		ColumnExpr("transport").
		ColumnExpr("count(*) AS n").
		// CASE, not sum(status = 200): PostgreSQL does not sum booleans.
		ColumnExpr("coalesce(sum(CASE WHEN status = 200 THEN 1 ELSE 0 END), 0) AS ok").
		ColumnExpr("coalesce(sum(latency_ms), 0) AS latency").
		Where("user_id = ?", userID).
		GroupExpr("transport")
	if !since.IsZero() {
		q = q.Where("created_at >= ?", utc(since))
	}
	return q
}

func round2(x float64) float64 { return math.Round(x*100) / 100 }
