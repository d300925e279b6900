// Package push manages and evaluates Matrix push rules as specified in the
// client-server API, "Push Notifications" module, sections "Push Rules",
// "Predefined Rules" and "Push Rules: API" (spec v1.19 text in
// /work/shared/spec/content/client-server-api/modules/push.md).
//
// The package is pure: no HTTP and no storage. A caller keeps one State per
// user as an opaque JSON blob (State.Marshal / LoadState), binds it to the
// server-default rules for that user with NewRules(state, DefaultRuleset(...)),
// serves /pushrules from the Rules methods and stores the State again after a
// mutation. Evaluate decides what an event does for one recipient.
//
// Every error returned by the API operations wraps one of the sentinel errors
// (ErrRuleNotFound, ErrInvalidRule, ErrBadBeforeAfter, ErrUnknownKind,
// ErrUnknownScope, ErrBadJSON) so the HTTP layer can map it with errors.Is.
//
// Since spec v1.17 (MSC4210) the default ruleset no longer contains the
// legacy body-matching mention rules (.m.rule.contains_display_name,
// .m.rule.roomnotif, .m.rule.contains_user_name). DefaultRuleset follows the
// spec; DefaultRulesetWith can add them back for older clients.
package push
