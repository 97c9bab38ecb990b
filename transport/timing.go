package transport

import (
	"math"
	"time"

	"github.com/infergate/infergate/infer"
)

// timing is the "timing" object of a result (WebSocket, SSE and POST /v2/classify):
// where its time went, in milliseconds rounded to 2 places. queue_ms, decode_ms,
// preprocess_ms and inference_ms are the model's part, within latency_ms; log_ms is the
// commit of the log row, which follows latency_ms and precedes the answer.
type timing struct {
	QueueMS      float64 `json:"queue_ms"`
	DecodeMS     float64 `json:"decode_ms"`
	PreprocessMS float64 `json:"preprocess_ms"`
	InferenceMS  float64 `json:"inference_ms"`
	LogMS        float64 `json:"log_ms"`
}

// timingOf returns the timing of res, whose log row took log to commit.
func timingOf(res *infer.Result, log time.Duration) timing {
	return timing{
		QueueMS:      round2(res.QueueMS),
		DecodeMS:     round2(res.DecodeMS),
		PreprocessMS: round2(res.PreprocessMS),
		InferenceMS:  round2(res.InferenceMS),
		LogMS:        ms(log),
	}
}

// batchOf returns how many images the model run that served res took at once.
func batchOf(res *infer.Result) int { return res.Batch }

func round2(v float64) float64 { return math.Round(v*100) / 100 }
