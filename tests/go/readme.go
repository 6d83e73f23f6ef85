package main

import (
	"context"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// The README's Go example ("Producing from other languages"), word for word:
// keep the two in step.

// deliverAt produces to tier (the largest tier not longer than the delay); the
// router delivers key, value and headers to target at the time at.
func deliverAt(ctx context.Context, cl *kgo.Client, tier, target string, key, value []byte, at time.Time) (*kgo.Record, error) {
	r := &kgo.Record{Topic: tier, Key: key, Value: value, Headers: []kgo.RecordHeader{
		{Key: "delay-target", Value: []byte(target)},
		{Key: "delay-deliver-at", Value: []byte(strconv.FormatInt(at.UnixMilli(), 10))},
	}}
	return r, cl.ProduceSync(ctx, r).FirstErr()
}
