package redisstore

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// The revocation signal says "some key or user was revoked: reload what you
// cache". It carries no data: each replica reloads from the database, so a
// lost or coalesced signal costs nothing but delay.

// revokedChannel is the Pub/Sub channel of the signal for prefix.
func revokedChannel(prefix string) string { return prefix + "revoked" }

// Publish sends one revocation signal to every Store with prefix (the default
// prefix when empty) on the server at url. It is for processes that hold no
// Store, such as the CLI that revokes a key.
func Publish(ctx context.Context, url, prefix string) error {
	ro, err := redis.ParseURL(url)
	if err != nil {
		return fmt.Errorf("redisstore: parse %q: %w", url, err)
	}
	if prefix == "" {
		prefix = DefaultPrefix
	}
	c := redis.NewClient(ro)
	defer c.Close()
	if err := c.Publish(ctx, revokedChannel(prefix), "1").Err(); err != nil {
		return fmt.Errorf("redisstore: publish revocation on %s: %w", ro.Addr, err)
	}
	return nil
}

// PublishRevoked sends one revocation signal to every Store with this Store's
// prefix, this one included.
func (s *Store) PublishRevoked(ctx context.Context) error {
	if err := s.client.Publish(ctx, revokedChannel(s.o.Prefix), "1").Err(); err != nil {
		return fmt.Errorf("redisstore: publish revocation: %w", err)
	}
	return nil
}

// Revoked returns a channel that receives a signal after any process
// publishes a revocation. Signals coalesce: the channel holds at most one,
// so a slow receiver sees one signal for many revocations. Signals published
// while the connection was down are lost (go-redis reconnects and subscribes
// again); the channel is not closed by Close, it just receives nothing more.
func (s *Store) Revoked() <-chan struct{} { return s.revoked }

// subscribe subscribes to the revocation channel and waits for the server to
// confirm, so that a signal published once Open returns is received.
func (s *Store) subscribe(ctx context.Context) error {
	s.pubsub = s.client.Subscribe(ctx, revokedChannel(s.o.Prefix))
	if _, err := s.pubsub.Receive(ctx); err != nil {
		s.pubsub.Close()
		return fmt.Errorf("redisstore: subscribe to revocations: %w", err)
	}
	return nil
}

// revokedLoop turns the messages of the subscription into signals on
// s.revoked until the Store closes.
func (s *Store) revokedLoop() {
	defer s.wg.Done()
	msgs := s.pubsub.Channel()
	for {
		select {
		case <-s.stop:
			return
		case _, ok := <-msgs:
			if !ok {
				return
			}
			select {
			case s.revoked <- struct{}{}:
			default:
			}
		}
	}
}
