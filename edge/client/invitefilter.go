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
	var cfg map[string]json.RawMessage
	if json.Unmarshal(ad.Content, &cfg) != nil {
		return inviteAllow
	}
	// patterns reads one list; a field that is missing, null or not a list
	// of strings contributes nothing, without voiding the others.
	patterns := func(field string) []string {
		var list []any
		_ = json.Unmarshal(cfg[field], &list)
		out := make([]string, 0, len(list))
		for _, p := range list {
			if ps, ok := p.(string); ok {
				out = append(out, ps)
			}
		}
		return out
	}
	_, server, _ := strings.Cut(inviter, ":")
	for _, level := range []struct {
		subject string
		fields  [3]string // allow, ignore, block: the order of inviteRule
	}{
		{inviter, [3]string{"allowed_users", "ignored_users", "blocked_users"}},
		{server, [3]string{"allowed_servers", "ignored_servers", "blocked_servers"}},
	} {
		for rule, field := range level.fields {
			for _, p := range patterns(field) {
				if globMatch(p, level.subject) {
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
