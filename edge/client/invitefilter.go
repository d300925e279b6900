package client

import (
	"encoding/json"
	"strings"

	"edge/edge/store"
)

// Invite filtering (MSC4155, unstable account data
// org.matrix.msc4155.invite_permission_config): a user lists users and
// servers, as globs (* and ?), whose invites are allowed, ignored
// (accepted from the inviter's point of view but never shown) or blocked
// (refused with 403). User rules decide before server rules; within each,
// allow before ignore before block; no match allows.

const invitePermissionConfigType = "org.matrix.msc4155.invite_permission_config"

type inviteRule int

const (
	inviteAllow inviteRule = iota
	inviteIgnore
	inviteBlock
)

// inviteRuleFor is what invitee's config says of an invite from inviter.
// A missing or unreadable config allows; null fields are empty lists.
func (s *Server) inviteRuleFor(tx *store.Tx, invitee, inviter string) inviteRule {
	ad, err := tx.AccountData(invitee, "", invitePermissionConfigType)
	if err != nil {
		return inviteAllow
	}
	var cfg struct {
		AllowedUsers   []any `json:"allowed_users"`
		IgnoredUsers   []any `json:"ignored_users"`
		BlockedUsers   []any `json:"blocked_users"`
		AllowedServers []any `json:"allowed_servers"`
		IgnoredServers []any `json:"ignored_servers"`
		BlockedServers []any `json:"blocked_servers"`
	}
	if json.Unmarshal(ad.Content, &cfg) != nil {
		return inviteAllow
	}
	_, server, _ := strings.Cut(inviter, ":")
	for _, level := range []struct {
		subject string
		lists   [3][]any
	}{
		{inviter, [3][]any{cfg.AllowedUsers, cfg.IgnoredUsers, cfg.BlockedUsers}},
		{server, [3][]any{cfg.AllowedServers, cfg.IgnoredServers, cfg.BlockedServers}},
	} {
		for rule, patterns := range level.lists {
			for _, p := range patterns {
				if ps, ok := p.(string); ok && globMatch(ps, level.subject) {
					return inviteRule(rule)
				}
			}
		}
	}
	return inviteAllow
}

// globMatch matches s against a glob where * is any run of characters and
// ? any one character, over the whole string. Iterative with one
// backtracking point, so hostile patterns stay linear-ish.
func globMatch(pattern, s string) bool {
	p, str := []rune(pattern), []rune(s)
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(str) {
		switch {
		case pi < len(p) && (p[pi] == '?' || p[pi] == str[si]):
			pi++
			si++
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}
