// Package notify wakes long-polling /sync requests when something they
// watch changes (https://spec.matrix.org/latest/client-server-api/#syncing),
// and holds the one stream that is not persisted: typing notifications.
package notify
