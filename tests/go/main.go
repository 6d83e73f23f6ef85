// Command delayinterop is the Go client of tests/go_client.rs: a plain
// franz-go producer (its defaults: acks=all, idempotent) writes delayed
// records for kafka-delay-router as a Go application would, following the
// wire contract of README.md and docs/cancellation.md:
//
//   - fixed: a fixed delay, to the smallest tier with `delay-target` only
//     (and headers of its own), keyed and keyless;
//   - deliver-at: an absolute `delay-deliver-at` through the cascade, to the
//     largest tier not longer than the delay, with the README's Go example
//     (deliverAt in readme.go);
//   - with a cancel topic: a record with a `delay-id` (cancelled), its
//     cancellation on the cancel topic (key = the id, value "cancel", header
//     `delay-cancel-until`), and a record with another id never cancelled.
//
// It prints one JSON line per record it sent (kind, topic, partition,
// offset, key, value, headers, record timestamp, target and due time, all
// times in Unix epoch ms) and checks nothing: the Rust test reads the target
// and checks the arrivals. Franz-go's default partitioner hashes keys as the
// Java producer does (toPositive(murmur2(key)) % partitions), which the
// cancel topic needs; the Rust test checks the partitions printed.
//
// Usage:
//
//	delayinterop -bootstrap-servers HOST:PORT -tiers TOPIC=MS,TOPIC=MS,... \
//	    -target TOPIC [-cancel-topic TOPIC] [-run ID]
//
// Each flag falls back to an environment variable: KAFKA_BOOTSTRAP_SERVERS,
// DELAY_TIERS, DELAY_TARGET, DELAY_CANCEL_TOPIC, RUN_ID. Exits 1 when a
// produce fails, 2 on bad usage.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// tier is a tier topic and its delay.
type tier struct {
	topic string
	delay time.Duration
}

type options struct {
	bootstrap   []string
	tiers       []tier // sorted by delay
	target      string
	cancelTopic string
	run         string
}

// header is a record header as printed: a null value stays null.
type header struct {
	Key   string  `json:"key"`
	Value *string `json:"value"`
}

// sent is one record as acknowledged by the broker, printed as a JSON line.
type sent struct {
	// fixed, deliver-at, cancelled, id-kept or cancellation.
	Kind string `json:"kind"`
	// Where it was produced: a tier, or the cancel topic.
	Topic       string   `json:"topic"`
	Partition   int32    `json:"partition"`
	Offset      int64    `json:"offset"`
	Key         *string  `json:"key"`
	Value       *string  `json:"value"`
	Headers     []header `json:"headers"`
	TimestampMs int64    `json:"timestamp_ms"`
	// For a delayed record: its destination and when it is due.
	Target string `json:"target,omitempty"`
	DueMs  int64  `json:"due_ms,omitempty"`
	// For a cancellation: when the broker acknowledged it.
	AckedMs int64 `json:"acked_ms,omitempty"`
}

func main() {
	o, err := parse(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage error:", err)
		fmt.Fprintln(os.Stderr, "usage: delayinterop -bootstrap-servers HOST:PORT -tiers TOPIC=MS,TOPIC=MS,..."+
			" -target TOPIC [-cancel-topic TOPIC] [-run ID]")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "delayinterop:", err)
		os.Exit(1)
	}
}

// parse reads the flags, each defaulting to its environment variable.
func parse(args []string) (options, error) {
	fs := flag.NewFlagSet("delayinterop", flag.ContinueOnError)
	bootstrap := fs.String("bootstrap-servers", os.Getenv("KAFKA_BOOTSTRAP_SERVERS"), "brokers, comma separated")
	tiers := fs.String("tiers", os.Getenv("DELAY_TIERS"), "tier topics and their delays in ms: TOPIC=MS,TOPIC=MS,...")
	target := fs.String("target", os.Getenv("DELAY_TARGET"), "the destination topic")
	cancel := fs.String("cancel-topic", os.Getenv("DELAY_CANCEL_TOPIC"), "the cancel topic (none: no cancellation)")
	runID := fs.String("run", os.Getenv("RUN_ID"), "a run id, part of every key and value")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	o := options{target: *target, cancelTopic: *cancel, run: *runID}
	if *bootstrap == "" || *tiers == "" || *target == "" {
		return o, errors.New("need -bootstrap-servers, -tiers and -target (or their environment variables)")
	}
	o.bootstrap = strings.Split(*bootstrap, ",")
	for _, t := range strings.Split(*tiers, ",") {
		eq := strings.LastIndexByte(t, '=')
		ms, err := strconv.ParseInt(t[eq+1:], 10, 64)
		if eq <= 0 || err != nil || ms <= 0 {
			return o, fmt.Errorf("-tiers takes TOPIC=MS, not %q", t)
		}
		o.tiers = append(o.tiers, tier{t[:eq], time.Duration(ms) * time.Millisecond})
	}
	sort.Slice(o.tiers, func(i, j int) bool { return o.tiers[i].delay < o.tiers[j].delay })
	if o.run == "" {
		o.run = strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	return o, nil
}

// largestNotLonger is the tier a record due in d goes to first.
func largestNotLonger(tiers []tier, d time.Duration) (tier, error) {
	for i := len(tiers) - 1; i >= 0; i-- {
		if tiers[i].delay <= d {
			return tiers[i], nil
		}
	}
	return tier{}, fmt.Errorf("no tier is as short as %v", d)
}

func run(o options) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(o.bootstrap...))
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, stop := context.WithTimeout(context.Background(), 60*time.Second)
	defer stop()
	out := json.NewEncoder(os.Stdout)
	emit := func(kind string, r *kgo.Record, due int64) error {
		return out.Encode(describe(kind, r, o.target, due))
	}

	// A fixed delay: the smallest tier, `delay-target` and headers of the
	// application's own (an empty value, a null one, a name twice), keyed and keyless.
	smallest := o.tiers[0]
	for i, key := range [][]byte{[]byte("fixed-" + o.run + "-0"), []byte("fixed-" + o.run + "-1"), nil} {
		r := &kgo.Record{
			Topic: smallest.topic,
			Key:   key,
			Value: []byte(fmt.Sprintf("fixed delay %d of run %s: naïve café ✓", i, o.run)),
			Headers: []kgo.RecordHeader{
				{Key: "delay-target", Value: []byte(o.target)},
				{Key: "trace-id", Value: []byte(fmt.Sprintf("%s-%d", o.run, i))},
				{Key: "x-empty", Value: []byte{}},
				{Key: "x-null"}, // a nil value: a null header value
				{Key: "x-twice", Value: []byte("first")},
				{Key: "x-twice", Value: []byte("second")},
			},
		}
		if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
			return fmt.Errorf("producing to %s: %w", r.Topic, err)
		}
		if err := emit("fixed", r, r.Timestamp.UnixMilli()+smallest.delay.Milliseconds()); err != nil {
			return err
		}
	}

	// An absolute time through the cascade, with the README's example.
	for i, d := range []time.Duration{1500 * time.Millisecond, 2500 * time.Millisecond, 5500 * time.Millisecond} {
		t, err := largestNotLonger(o.tiers, d)
		if err != nil {
			return err
		}
		at := time.Now().Add(d)
		key := []byte(fmt.Sprintf("at-%s-%d", o.run, i))
		value := []byte(fmt.Sprintf("due at +%v, run %s", d, o.run))
		r, err := deliverAt(ctx, cl, t.topic, o.target, key, value, at)
		if err != nil {
			return fmt.Errorf("producing to %s: %w", t.topic, err)
		}
		if err := emit("deliver-at", r, at.UnixMilli()); err != nil {
			return err
		}
	}

	if o.cancelTopic == "" {
		return nil
	}
	// A record with a `delay-id` to the largest tier, then its cancellation,
	// acknowledged (well) before the record is due.
	largest := o.tiers[len(o.tiers)-1]
	id := "order-42-" + o.run
	r := &kgo.Record{Topic: largest.topic, Key: []byte(id), Value: []byte("pay order 42"), Headers: []kgo.RecordHeader{
		{Key: "delay-target", Value: []byte(o.target)},
		{Key: "delay-id", Value: []byte(id)},
	}}
	if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
		return fmt.Errorf("producing to %s: %w", r.Topic, err)
	}
	if err := emit("cancelled", r, r.Timestamp.UnixMilli()+largest.delay.Milliseconds()); err != nil {
		return err
	}
	until := time.Now().Add(24 * time.Hour).UnixMilli()
	c := &kgo.Record{Topic: o.cancelTopic, Key: []byte(id), Value: []byte("cancel"), Headers: []kgo.RecordHeader{
		{Key: "delay-cancel-until", Value: []byte(strconv.FormatInt(until, 10))},
	}}
	if err := cl.ProduceSync(ctx, c).FirstErr(); err != nil {
		return fmt.Errorf("producing to %s: %w", c.Topic, err)
	}
	s := describe("cancellation", c, "", 0)
	s.AckedMs = time.Now().UnixMilli()
	if err := out.Encode(s); err != nil {
		return err
	}
	// Another id, never cancelled: delivered as usual.
	kept := "order-43-" + o.run
	n := &kgo.Record{Topic: largest.topic, Key: []byte(kept), Value: []byte("pay order 43"), Headers: []kgo.RecordHeader{
		{Key: "delay-target", Value: []byte(o.target)},
		{Key: "delay-id", Value: []byte(kept)},
	}}
	if err := cl.ProduceSync(ctx, n).FirstErr(); err != nil {
		return fmt.Errorf("producing to %s: %w", n.Topic, err)
	}
	return emit("id-kept", n, n.Timestamp.UnixMilli()+largest.delay.Milliseconds())
}

// describe is what was sent, after the broker acknowledged it.
func describe(kind string, r *kgo.Record, target string, due int64) sent {
	s := sent{
		Kind:        kind,
		Topic:       r.Topic,
		Partition:   r.Partition,
		Offset:      r.Offset,
		Key:         text(r.Key),
		Value:       text(r.Value),
		Headers:     []header{},
		TimestampMs: r.Timestamp.UnixMilli(),
		Target:      target,
		DueMs:       due,
	}
	for _, h := range r.Headers {
		s.Headers = append(s.Headers, header{h.Key, text(h.Value)})
	}
	return s
}

// text is b as a string, nil for nil.
func text(b []byte) *string {
	if b == nil {
		return nil
	}
	s := string(b)
	return &s
}
