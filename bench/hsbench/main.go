// Command hsbench measures a Matrix homeserver over the client-server API:
// message send throughput, /sync wake latency and initial /sync time.
//
// Every run registers fresh random users and rooms, so it can be repeated
// against the same server. With -report it instead prints a markdown table
// comparing result files written with -json.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

type throughputResult struct {
	Senders     int     `json:"senders"`
	Messages    int     `json:"messages"`
	Seconds     float64 `json:"seconds"`
	PerSec      float64 `json:"msgs_per_sec"`
	SendP50ms   float64 `json:"send_p50_ms"`
	SendP99ms   float64 `json:"send_p99_ms"`
	RateLimited int64   `json:"rate_limited"`
	// DrainS is how long the server kept working after the last send was
	// acknowledged (only with -pid): work deferred past the response.
	DrainS float64 `json:"drain_s,omitempty"`
}

type wakeResult struct {
	Samples int     `json:"samples"`
	P50ms   float64 `json:"p50_ms"`
	P99ms   float64 `json:"p99_ms"`
	MinMS   float64 `json:"min_ms"`
	MaxMS   float64 `json:"max_ms"`
}

type initialSyncResult struct {
	Rooms    int       `json:"rooms"`
	RoomMsgs int       `json:"msgs_per_room"`
	RunsMS   []float64 `json:"runs_ms"`
	MedianMS float64   `json:"median_ms"`
	Bytes    int       `json:"bytes"`
}

type result struct {
	Label       string             `json:"label,omitempty"`
	URL         string             `json:"url"`
	Time        string             `json:"time"`
	Meta        []metaItem         `json:"meta,omitempty"`
	Throughput  []throughputResult `json:"throughput,omitempty"`
	Wake        *wakeResult        `json:"wake,omitempty"`
	InitialSync *initialSyncResult `json:"initial_sync,omitempty"`
	RateLimited int64              `json:"rate_limited_total"`
	Errors      map[string]string  `json:"errors,omitempty"`
}

// metaItem is a named figure measured outside the phases (memory, binary
// size); a slice keeps the caller's order in the report.
type metaItem struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

type bench struct {
	url     string
	http    *http.Client
	limited atomic.Int64 // M_LIMIT_EXCEEDED responses seen (and retried)
	pid     int
}

// cpuTicks returns the process's user+system CPU time in clock ticks
// (USER_HZ, 100 per second on Linux).
func cpuTicks(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which may contain spaces: state is
	// field 3 of stat(5), utime and stime are 14 and 15.
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	var u, s int64
	_, err = fmt.Sscan(f[11]+" "+f[12], &u, &s)
	return u + s, err
}

// waitIdle waits until the server (given by -pid) uses at most 4% of a CPU
// over a 500ms window. Servers that acknowledge before finishing their work
// would otherwise charge one phase's backlog to the next. It returns how long
// the server stayed busy.
func (b *bench) waitIdle(ctx context.Context) time.Duration {
	if b.pid == 0 {
		return 0
	}
	const window = 500 * time.Millisecond
	start := time.Now()
	prev, err := cpuTicks(b.pid)
	for err == nil && time.Since(start) < 2*time.Minute {
		select {
		case <-time.After(window):
		case <-ctx.Done():
			return time.Since(start)
		}
		var cur int64
		if cur, err = cpuTicks(b.pid); err == nil && cur-prev <= 2 {
			return time.Since(start) - window
		}
		prev = cur
	}
	fmt.Fprintf(os.Stderr, "hsbench: server not idle after %s (%v); measuring anyway\n", time.Since(start).Round(time.Second), err)
	return time.Since(start)
}

func main() {
	var (
		url      = flag.String("url", "http://127.0.0.1:8008", "homeserver base URL")
		asJSON   = flag.Bool("json", false, "print a JSON object instead of the table")
		label    = flag.String("label", "", "name of the target, carried into the JSON")
		phases   = flag.String("phases", "throughput,wake,initial", "comma-separated phases to run")
		msgs     = flag.Int("msgs", 2000, "messages per throughput run (ignored with -duration)")
		duration = flag.Duration("duration", 0, "run each throughput phase for this long instead of -msgs")
		senders  = flag.Int("senders", 8, "concurrent senders in the second throughput run")
		wakeN    = flag.Int("wake", 200, "wake-latency samples")
		wakeGap  = flag.Duration("wake-gap", 20*time.Millisecond, "pause before each wake send so the receiver's long-poll is parked")
		rooms    = flag.Int("rooms", 100, "rooms for the initial-sync user")
		roomMsgs = flag.Int("room-msgs", 5, "messages per room for the initial-sync user")
		syncRuns = flag.Int("syncs", 5, "timed initial syncs (median reported)")
		pid      = flag.Int("pid", 0, "local server process id: wait for it to go idle before each measurement, record its RSS")
		report   = flag.Bool("report", false, "print a markdown table comparing the JSON result files given as arguments")
		meta     []metaItem
	)
	flag.Func("meta", "name=value recorded in the JSON (repeatable), e.g. idle RSS measured by the caller", func(s string) error {
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			return errors.New("want name=value")
		}
		meta = append(meta, metaItem{k, v})
		return nil
	})
	flag.Parse()

	if *report {
		if err := printReport(flag.Args()); err != nil {
			fatal(err)
		}
		return
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	// One shared transport with a deep idle pool: the default keeps only 2 idle
	// connections per host, which makes 8 senders churn TCP connections.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	b := &bench{url: *url, pid: *pid, http: &http.Client{Transport: tr, Timeout: 90 * time.Second}}

	res := result{Label: *label, URL: *url, Time: time.Now().UTC().Format(time.RFC3339), Meta: meta, Errors: map[string]string{}}
	want := strings.Split(*phases, ",")
	fail := func(phase string, err error) {
		fmt.Fprintf(os.Stderr, "hsbench: %s: %v\n", phase, err)
		res.Errors[phase] = err.Error()
	}
	if slices.Contains(want, "throughput") {
		for _, n := range []int{1, *senders} {
			r, err := b.throughput(ctx, n, *msgs, *duration)
			if err != nil {
				fail(fmt.Sprintf("throughput-%d", n), err)
				continue
			}
			res.Throughput = append(res.Throughput, *r)
		}
	}
	if slices.Contains(want, "wake") {
		if r, err := b.wake(ctx, *wakeN, *wakeGap); err != nil {
			fail("wake", err)
		} else {
			res.Wake = r
		}
	}
	if slices.Contains(want, "initial") {
		if r, err := b.initialSync(ctx, *rooms, *roomMsgs, *syncRuns); err != nil {
			fail("initial", err)
		} else {
			res.InitialSync = r
		}
	}

	res.RateLimited = b.limited.Load()
	if *pid > 0 {
		if st, err := procStatus(*pid); err != nil {
			fail("pid", err)
		} else {
			res.Meta = append(res.Meta,
				metaItem{"peak RSS, VmHWM (MiB)", st["VmHWM"]},
				metaItem{"RSS after load (MiB)", st["VmRSS"]})
		}
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			fatal(err)
		}
	} else {
		printTable(res)
	}
	if len(res.Errors) > 0 {
		os.Exit(1)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "hsbench:", err)
	os.Exit(1)
}

// procStatus returns the Vm* lines of /proc/PID/status, in MiB.
func procStatus(pid int) (map[string]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	st := map[string]string{}
	for line := range strings.Lines(string(data)) {
		var k string
		var kib float64
		if _, err := fmt.Sscanf(line, "%s %f kB", &k, &kib); err == nil && strings.HasPrefix(k, "Vm") {
			st[strings.TrimSuffix(k, ":")] = fmt.Sprintf("%.1f", kib/1024)
		}
	}
	return st, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// do runs fn, retrying on M_LIMIT_EXCEEDED so that a server's rate limiting
// shows up as a count in the results instead of aborting the run.
func (b *bench) do(ctx context.Context, fn func() error) error {
	for {
		err := fn()
		if !errors.Is(err, mautrix.MLimitExceeded) {
			return err
		}
		b.limited.Add(1)
		wait := 100 * time.Millisecond
		var re mautrix.RespError
		if errors.As(err, &re) {
			if ms, ok := re.ExtraData["retry_after_ms"].(float64); ok {
				wait = time.Duration(ms) * time.Millisecond
			}
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// newUser registers a fresh user. It does not use RegisterDummy, which fails
// on servers that register without an interactive-auth round trip.
func (b *bench) newUser(ctx context.Context) (*mautrix.Client, error) {
	cli, err := mautrix.NewClient(b.url, "", "")
	if err != nil {
		return nil, err
	}
	cli.Client = b.http
	req := &mautrix.ReqRegister[any]{Username: "hsb" + randHex(6), Password: randHex(16)}
	var resp *mautrix.RespRegister
	err = b.do(ctx, func() error {
		r, uia, err := cli.Register(ctx, req)
		if uia != nil && uia.HasSingleStageFlow(mautrix.AuthTypeDummy) {
			req.Auth = mautrix.BaseAuthData{Type: mautrix.AuthTypeDummy, Session: uia.Session}
			r, _, err = cli.Register(ctx, req)
		} else if uia != nil {
			return errors.New("server offers no m.login.dummy registration flow")
		}
		resp = r
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("register: %w", err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	return cli, nil
}

// newUsers registers n users concurrently.
func (b *bench) newUsers(ctx context.Context, n int) ([]*mautrix.Client, error) {
	users := make([]*mautrix.Client, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { users[i], errs[i] = b.newUser(ctx) })
	}
	wg.Wait()
	return users, errors.Join(errs...)
}

// sharedRoom has users[0] create a public room that all other users join.
func (b *bench) sharedRoom(ctx context.Context, users []*mautrix.Client) (id.RoomID, error) {
	var room id.RoomID
	err := b.do(ctx, func() error {
		r, err := users[0].CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "hsbench"})
		if err == nil {
			room = r.RoomID
		}
		return err
	})
	if err != nil {
		return "", fmt.Errorf("create room: %w", err)
	}
	for _, u := range users[1:] {
		if err := b.do(ctx, func() error { _, err := u.JoinRoomByID(ctx, room); return err }); err != nil {
			return "", fmt.Errorf("join: %w", err)
		}
	}
	return room, nil
}

func (b *bench) send(ctx context.Context, cli *mautrix.Client, room id.RoomID, body string) error {
	return b.do(ctx, func() error {
		_, err := cli.SendMessageEvent(ctx, room, event.EventMessage,
			&event.MessageEventContent{MsgType: event.MsgText, Body: body})
		return err
	})
}

// throughput sends into one fresh room from n users at once, each sending
// back to back, until total messages are sent or the duration has passed.
func (b *bench) throughput(ctx context.Context, n, total int, d time.Duration) (*throughputResult, error) {
	users, err := b.newUsers(ctx, n)
	if err != nil {
		return nil, err
	}
	room, err := b.sharedRoom(ctx, users)
	if err != nil {
		return nil, err
	}
	var (
		remaining = atomic.Int64{}
		deadline  time.Time
		lats      = make([][]time.Duration, n)
		errs      = make([]error, n)
		wg        sync.WaitGroup
	)
	remaining.Store(int64(total))
	b.waitIdle(ctx)
	limited0 := b.limited.Load()
	start := time.Now()
	if d > 0 {
		deadline = start.Add(d)
	}
	for i, u := range users {
		wg.Go(func() {
			for seq := 0; ; seq++ {
				if d > 0 && !time.Now().Before(deadline) || d == 0 && remaining.Add(-1) < 0 {
					return
				}
				t0 := time.Now()
				if err := b.send(ctx, u, room, fmt.Sprintf("throughput %d/%d", i, seq)); err != nil {
					errs[i] = err
					return
				}
				lats[i] = append(lats[i], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	all := slices.Concat(lats...)
	slices.Sort(all)
	return &throughputResult{
		Senders:     n,
		Messages:    len(all),
		Seconds:     round3(elapsed.Seconds()),
		PerSec:      round3(float64(len(all)) / elapsed.Seconds()),
		SendP50ms:   ms(pct(all, 0.50)),
		SendP99ms:   ms(pct(all, 0.99)),
		RateLimited: b.limited.Load() - limited0,
		DrainS:      round3(b.waitIdle(ctx).Seconds()),
	}, nil
}

// syncResp is the part of a /sync response the benchmark looks at; decoding
// only this keeps client-side work small.
type syncResp struct {
	NextBatch string `json:"next_batch"`
	Rooms     struct {
		Join map[id.RoomID]struct {
			Timeline struct {
				Events []syncEvent `json:"events"`
			} `json:"timeline"`
		} `json:"join"`
	} `json:"rooms"`
}

type syncEvent struct {
	Type    string `json:"type"`
	Content struct {
		Body string `json:"body"`
	} `json:"content"`
}

// rawSync does one /sync and returns the raw body with the time it had fully
// arrived, before any decoding.
func rawSync(ctx context.Context, cli *mautrix.Client, since string, timeoutMS int) ([]byte, time.Time, error) {
	q := map[string]string{"timeout": fmt.Sprint(timeoutMS)}
	if since != "" {
		q["since"] = since
	}
	body, err := cli.MakeFullRequest(ctx, mautrix.FullRequest{
		Method:      http.MethodGet,
		URL:         cli.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, q),
		MaxAttempts: 1,
	})
	return body, time.Now(), err
}

type arrival struct {
	body string
	at   time.Time
	err  error
}

// wake measures how long a message takes to reach a receiver that is already
// parked in a long-poll /sync: from just before the send request until the
// /sync response containing it has arrived.
func (b *bench) wake(ctx context.Context, n int, gap time.Duration) (*wakeResult, error) {
	users, err := b.newUsers(ctx, 2)
	if err != nil {
		return nil, err
	}
	sender, receiver := users[0], users[1]
	room, err := b.sharedRoom(ctx, users)
	if err != nil {
		return nil, err
	}
	body, _, err := rawSync(ctx, receiver, "", 0)
	if err != nil {
		return nil, fmt.Errorf("first sync: %w", err)
	}
	var first syncResp
	if err := json.Unmarshal(body, &first); err != nil {
		return nil, err
	}

	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	arrivals := make(chan arrival, 64)
	go func() {
		since := first.NextBatch
		for rctx.Err() == nil {
			body, at, err := rawSync(rctx, receiver, since, 30000)
			if err != nil {
				if rctx.Err() == nil {
					arrivals <- arrival{err: err}
				}
				return
			}
			var s syncResp
			if err := json.Unmarshal(body, &s); err != nil {
				arrivals <- arrival{err: err}
				return
			}
			since = s.NextBatch
			for _, e := range s.Rooms.Join[room].Timeline.Events {
				if e.Type == event.EventMessage.Type {
					arrivals <- arrival{body: e.Content.Body, at: at}
				}
			}
		}
	}()

	b.waitIdle(ctx)
	samples := make([]time.Duration, 0, n)
	for i := range n {
		time.Sleep(gap)
		tag := fmt.Sprintf("wake %d %s", i, randHex(4))
		t0 := time.Now()
		if err := b.send(ctx, sender, room, tag); err != nil {
			return nil, err
		}
		timeout := time.After(35 * time.Second)
	wait:
		for {
			select {
			case a := <-arrivals:
				if a.err != nil {
					return nil, fmt.Errorf("receiver sync: %w", a.err)
				}
				if a.body == tag {
					samples = append(samples, a.at.Sub(t0))
					break wait
				}
			case <-timeout:
				return nil, fmt.Errorf("message %d never arrived via /sync", i)
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	slices.Sort(samples)
	return &wakeResult{
		Samples: n,
		P50ms:   ms(pct(samples, 0.50)),
		P99ms:   ms(pct(samples, 0.99)),
		MinMS:   ms(samples[0]),
		MaxMS:   ms(samples[len(samples)-1]),
	}, nil
}

// initialSync builds a user in many rooms with a few messages each, then
// times full /sync requests (no since token).
func (b *bench) initialSync(ctx context.Context, rooms, perRoom, runs int) (*initialSyncResult, error) {
	u, err := b.newUser(ctx)
	if err != nil {
		return nil, err
	}
	// Each room's last message is unique, so we can tell when /sync has
	// caught up with the setup (some servers index events asynchronously).
	lastBody := make(map[id.RoomID]string, rooms)
	var mu sync.Mutex
	jobs := make(chan int)
	errs := make([]error, 4)
	var wg sync.WaitGroup
	for w := range errs {
		wg.Go(func() {
			for i := range jobs {
				if errs[w] != nil {
					continue // drain
				}
				var room id.RoomID
				errs[w] = b.do(ctx, func() error {
					r, err := u.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: fmt.Sprintf("hsbench %d", i)})
					if err == nil {
						room = r.RoomID
					}
					return err
				})
				var last string
				for m := 0; m < perRoom && errs[w] == nil; m++ {
					last = fmt.Sprintf("room %d msg %d %s", i, m, randHex(4))
					errs[w] = b.send(ctx, u, room, last)
				}
				if errs[w] == nil {
					mu.Lock()
					lastBody[room] = last
					mu.Unlock()
				}
			}
		})
	}
	for i := range rooms {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}

	// Warm-up (untimed) until the full sync reflects everything sent.
	settled := time.Now().Add(60 * time.Second)
	for {
		body, _, err := rawSync(ctx, u, "", 0)
		if err != nil {
			return nil, err
		}
		if caughtUp(body, lastBody) {
			break
		}
		if time.Now().After(settled) {
			return nil, errors.New("full /sync did not show all rooms and messages within 60s")
		}
		time.Sleep(200 * time.Millisecond)
	}

	res := &initialSyncResult{Rooms: rooms, RoomMsgs: perRoom}
	b.waitIdle(ctx)
	var times []time.Duration
	for range runs {
		t0 := time.Now()
		body, at, err := rawSync(ctx, u, "", 0)
		if err != nil {
			return nil, err
		}
		times = append(times, at.Sub(t0))
		res.RunsMS = append(res.RunsMS, ms(at.Sub(t0)))
		res.Bytes = len(body)
	}
	slices.Sort(times)
	res.MedianMS = ms(pct(times, 0.50))
	return res, nil
}

func caughtUp(body []byte, lastBody map[id.RoomID]string) bool {
	var s syncResp
	if json.Unmarshal(body, &s) != nil {
		return false
	}
	for room, last := range lastBody {
		j, ok := s.Rooms.Join[room]
		if !ok {
			return false
		}
		if !slices.ContainsFunc(j.Timeline.Events, func(e syncEvent) bool { return e.Content.Body == last }) {
			return false
		}
	}
	return true
}

// pct is the nearest-rank percentile of sorted samples.
func pct(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

// ms converts to milliseconds, keeping microsecond precision.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }

func printTable(r result) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "hsbench\t%s\t%s\n", r.URL, r.Label)
	for _, t := range r.Throughput {
		fmt.Fprintf(w, "throughput, %d sender(s)\t%.1f msg/s\t%d msgs in %.2fs, send p50 %.3f ms p99 %.3f ms, busy %.1fs after last ack\n",
			t.Senders, t.PerSec, t.Messages, t.Seconds, t.SendP50ms, t.SendP99ms, t.DrainS)
	}
	if x := r.Wake; x != nil {
		fmt.Fprintf(w, "sync wake latency\tp50 %.3f ms\tp99 %.3f ms (min %.3f, max %.3f, n=%d)\n", x.P50ms, x.P99ms, x.MinMS, x.MaxMS, x.Samples)
	}
	if x := r.InitialSync; x != nil {
		fmt.Fprintf(w, "initial sync, %d rooms\t%.3f ms\tmedian of %d, %d msgs/room, %d bytes\n", x.Rooms, x.MedianMS, len(x.RunsMS), x.RoomMsgs, x.Bytes)
	}
	fmt.Fprintf(w, "rate-limited responses\t%d\t(retried after retry_after_ms, all phases)\n", r.RateLimited)
	for _, m := range r.Meta {
		fmt.Fprintf(w, "%s\t%s\n", m.Name, m.Value)
	}
	for k, v := range r.Errors {
		fmt.Fprintf(w, "ERROR %s\t%s\n", k, v)
	}
	w.Flush()
}

// printReport prints one markdown column per result file.
func printReport(files []string) error {
	var rs []result
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var r result
		if err := json.Unmarshal(data, &r); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		if r.Label == "" {
			r.Label = f
		}
		rs = append(rs, r)
	}
	if len(rs) == 0 {
		return errors.New("-report needs result files")
	}
	row := func(name string, cell func(r result) string) {
		fmt.Print("| ", name, " |")
		for _, r := range rs {
			fmt.Print(" ", cell(r), " |")
		}
		fmt.Println()
	}
	row("metric", func(r result) string { return r.Label })
	fmt.Println("|---|" + strings.Repeat("---:|", len(rs)))
	for i, t := range rs[0].Throughput {
		thr := func(r result) *throughputResult {
			if i < len(r.Throughput) {
				return &r.Throughput[i]
			}
			return nil
		}
		row(fmt.Sprintf("throughput, %d sender(s) (msg/s)", t.Senders), func(r result) string {
			if t := thr(r); t != nil {
				return fmt.Sprintf("%.1f", t.PerSec)
			}
			return "–"
		})
		row(fmt.Sprintf("send latency p50 / p99, %d sender(s) (ms)", t.Senders), func(r result) string {
			if t := thr(r); t != nil {
				return fmt.Sprintf("%.3f / %.3f", t.SendP50ms, t.SendP99ms)
			}
			return "–"
		})
		row(fmt.Sprintf("server busy after last ack, %d sender(s) (s)", t.Senders), func(r result) string {
			if t := thr(r); t != nil && t.DrainS > 0 {
				return fmt.Sprintf("%.1f", t.DrainS)
			}
			return "–"
		})
	}
	wakeN := "n=–"
	if w := rs[0].Wake; w != nil {
		wakeN = fmt.Sprintf("n=%d", w.Samples)
	}
	row("sync wake latency p50 (ms, "+wakeN+")", func(r result) string {
		if r.Wake == nil {
			return "–"
		}
		return fmt.Sprintf("%.3f", r.Wake.P50ms)
	})
	row("sync wake latency p99 (ms, "+wakeN+")", func(r result) string {
		if r.Wake == nil {
			return "–"
		}
		return fmt.Sprintf("%.3f", r.Wake.P99ms)
	})
	row("initial sync, median (ms)", func(r result) string {
		if r.InitialSync == nil {
			return "–"
		}
		x := r.InitialSync
		return fmt.Sprintf("%.3f (of %d; %d rooms × %d msgs, %d KiB)", x.MedianMS, len(x.RunsMS), x.Rooms, x.RoomMsgs, x.Bytes/1024)
	})
	row("rate-limited responses (retried), all phases", func(r result) string { return fmt.Sprint(r.RateLimited) })
	var names []string
	for _, r := range rs {
		for _, m := range r.Meta {
			if !slices.Contains(names, m.Name) {
				names = append(names, m.Name)
			}
		}
	}
	for _, name := range names {
		row(name, func(r result) string {
			if i := slices.IndexFunc(r.Meta, func(m metaItem) bool { return m.Name == name }); i >= 0 {
				return r.Meta[i].Value
			}
			return "–"
		})
	}
	row("errors", func(r result) string {
		if len(r.Errors) == 0 {
			return "none"
		}
		var es []string
		for k := range r.Errors {
			es = append(es, k)
		}
		slices.Sort(es)
		return strings.Join(es, ", ")
	})
	return nil
}
