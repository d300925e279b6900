package room

import (
	"slices"
	"strings"

	"maunium.net/go/mautrix/id"
)

// UnstableVersions are experimental room versions this node creates: each
// is a stable version plus one MSC's rules. Only createRoom offers them;
// federation joins stay with SupportedVersions.
var UnstableVersions = []string{"org.matrix.msc3757.10", "org.matrix.msc3757.11"}

// msc3757Prefix names the versions with owned state (MSC3757).
const msc3757Prefix = "org.matrix.msc3757."

// Features is the stable room version whose formats and rules version v
// follows: v itself, or the base of an unstable version. Every room
// version predicate goes through it, as mautrix knows only stable ones.
func Features(v string) id.RoomVersion {
	if base, ok := strings.CutPrefix(v, msc3757Prefix); ok && slices.Contains(UnstableVersions, v) {
		return id.RoomVersion(base)
	}
	return id.RoomVersion(v)
}

// OwnedState tells whether version v has MSC3757's owned state: a state
// key that is a user ID, or a user ID and "_" and more, belongs to that
// user, and others may only write it with a greater power level.
func OwnedState(v string) bool {
	return strings.HasPrefix(v, msc3757Prefix) && slices.Contains(UnstableVersions, v)
}

// StateKeyOwner is the user a state key starting with "@" belongs to in
// versions with owned state: the key itself when it is a user ID, else
// the shortest user ID it starts with followed by "_". ok is false when
// there is none (a malformed key).
func StateKeyOwner(stateKey string) (owner string, ok bool) {
	if validUserID(stateKey) {
		return stateKey, true
	}
	colon := strings.IndexByte(stateKey, ':')
	for i := colon; colon >= 0 && i < len(stateKey); i++ {
		if stateKey[i] == '_' && validUserID(stateKey[:i]) {
			return stateKey[:i], true
		}
	}
	return "", false
}
