// kubelet-client drives a DRA kubelet plugin the way the kubelet does, through the published
// k8s.io/kubelet API packages (pluginregistration/v1, dra/v1, dra/v1beta1): a peer that
// shares no code with the plugin under test. Output is one JSON object on stdout.
//
//	kubelet-client info REG_SOCK
//	kubelet-client prepare|unprepare DRA_SOCK v1|v1beta1 NAMESPACE NAME UID
//	kubelet-client bench-prepare DRA_SOCK NAMESPACE NAME UID ROUNDS
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	drav1 "k8s.io/kubelet/pkg/apis/dra/v1"
	drav1beta1 "k8s.io/kubelet/pkg/apis/dra/v1beta1"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kubelet-client: "+format+"\n", args...)
	os.Exit(1)
}

// dial connects the way the kubelet's plugin watcher does (grpc.DialContext on the bare
// socket path with a unix dialer): the :authority header is then the socket path, which a
// server must accept.
func dial(sock string) *grpc.ClientConn {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}),
	)
	if err != nil {
		fail("dial %s: %v", sock, err)
	}
	return conn
}

func emit(v any) {
	if err := json.NewEncoder(os.Stdout).Encode(v); err != nil {
		fail("encode: %v", err)
	}
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: info REG_SOCK | prepare|unprepare DRA_SOCK v1|v1beta1 NS NAME UID | bench-prepare DRA_SOCK NS NAME UID ROUNDS")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn := dial(os.Args[2])
	defer conn.Close()
	switch os.Args[1] {
	case "info":
		info, err := registerapi.NewRegistrationClient(conn).GetInfo(ctx, &registerapi.InfoRequest{})
		if err != nil {
			fail("GetInfo: %v", err)
		}
		_, err = registerapi.NewRegistrationClient(conn).NotifyRegistrationStatus(ctx,
			&registerapi.RegistrationStatus{PluginRegistered: true})
		if err != nil {
			fail("NotifyRegistrationStatus: %v", err)
		}
		emit(info)
	case "prepare", "unprepare":
		if len(os.Args) != 7 {
			fail("usage: %s DRA_SOCK v1|v1beta1 NS NAME UID", os.Args[1])
		}
		version, ns, name, uid := os.Args[3], os.Args[4], os.Args[5], os.Args[6]
		switch version {
		case "v1":
			c := drav1.NewDRAPluginClient(conn)
			claims := []*drav1.Claim{{Namespace: ns, Name: name, UID: uid}}
			if os.Args[1] == "prepare" {
				r, err := c.NodePrepareResources(ctx, &drav1.NodePrepareResourcesRequest{Claims: claims})
				if err != nil {
					fail("NodePrepareResources: %v", err)
				}
				emit(r)
			} else {
				r, err := c.NodeUnprepareResources(ctx, &drav1.NodeUnprepareResourcesRequest{Claims: claims})
				if err != nil {
					fail("NodeUnprepareResources: %v", err)
				}
				emit(r)
			}
		case "v1beta1":
			c := drav1beta1.NewDRAPluginClient(conn)
			claims := []*drav1beta1.Claim{{Namespace: ns, Name: name, UID: uid}}
			if os.Args[1] == "prepare" {
				r, err := c.NodePrepareResources(ctx, &drav1beta1.NodePrepareResourcesRequest{Claims: claims})
				if err != nil {
					fail("NodePrepareResources: %v", err)
				}
				emit(r)
			} else {
				r, err := c.NodeUnprepareResources(ctx, &drav1beta1.NodeUnprepareResourcesRequest{Claims: claims})
				if err != nil {
					fail("NodeUnprepareResources: %v", err)
				}
				emit(r)
			}
		default:
			fail("unknown API version %q", version)
		}
	case "bench-prepare":
		if len(os.Args) != 7 {
			fail("usage: bench-prepare DRA_SOCK NS NAME UID ROUNDS")
		}
		rounds, err := strconv.Atoi(os.Args[6])
		if err != nil || rounds < 1 {
			fail("ROUNDS must be a positive integer")
		}
		c := drav1.NewDRAPluginClient(conn)
		claims := []*drav1.Claim{{Namespace: os.Args[3], Name: os.Args[4], UID: os.Args[5]}}
		// Prepare includes the plugin's GET of the claim from the API server; unprepare does
		// no API call and serves as the same-run baseline of the gRPC + file-system path.
		var prep, unprep []time.Duration
		for i := 0; i < rounds; i++ {
			start := time.Now()
			r, err := c.NodePrepareResources(ctx, &drav1.NodePrepareResourcesRequest{Claims: claims})
			if err != nil || r.Claims[os.Args[5]].GetError() != "" {
				fail("prepare round %d: %v %v", i, err, r)
			}
			prep = append(prep, time.Since(start))
			start = time.Now()
			u, err := c.NodeUnprepareResources(ctx, &drav1.NodeUnprepareResourcesRequest{Claims: claims})
			if err != nil || u.Claims[os.Args[5]].GetError() != "" {
				fail("unprepare round %d: %v %v", i, err, u)
			}
			unprep = append(unprep, time.Since(start))
		}
		p := func(s []time.Duration, q float64) float64 {
			sort.Slice(s, func(a, b int) bool { return s[a] < s[b] })
			return float64(s[int(q*float64(len(s)-1))].Microseconds())
		}
		emit(map[string]any{"rounds": rounds,
			"p50_us": p(prep, 0.5), "p99_us": p(prep, 0.99),
			"unprepare_p50_us": p(unprep, 0.5), "unprepare_p99_us": p(unprep, 0.99)})
	default:
		fail("unknown command %q", os.Args[1])
	}
}
