package store

import (
	"bytes"
	"encoding/json"
)

// User is a local account.
type User struct {
	Localpart    string `json:"localpart"`
	PasswordHash string `json:"password_hash,omitempty"`
	Admin        bool   `json:"admin,omitempty"`
	Guest        bool   `json:"guest,omitempty"`
	Deactivated  bool   `json:"deactivated,omitempty"`
	CreatedTS    int64  `json:"created_ts"`
	DisplayName  string `json:"displayname,omitempty"`
	AvatarURL    string `json:"avatar_url,omitempty"`
}

// Device is a login session of a user; its access token is stored only as a hash.
type Device struct {
	UserID      string `json:"user_id"`
	DeviceID    string `json:"device_id"`
	DisplayName string `json:"display_name,omitempty"`
	TokenHash   string `json:"token_hash"`
	RefreshHash string `json:"refresh_hash,omitempty"`
	CreatedTS   int64  `json:"created_ts"`
	LastSeenTS  int64  `json:"last_seen_ts,omitempty"`
	LastSeenIP  string `json:"last_seen_ip,omitempty"`
}

// Session is what an access-token hash resolves to.
type Session struct {
	UserID    string `json:"user_id"`
	DeviceID  string `json:"device_id"`
	ExpiresTS int64  `json:"expires_ts,omitempty"` // 0: never
	Refresh   bool   `json:"refresh,omitempty"`    // a refresh token, not an access token
}

func putJSON(b interface{ Put(k, v []byte) error }, k []byte, v any) {
	data, err := json.Marshal(v)
	must(err)
	must(b.Put(k, data))
}

func getJSON(data []byte, v any) error {
	if data == nil {
		return ErrNotFound
	}
	return json.Unmarshal(data, v)
}

// CreateUser stores a new user; ErrExists if the localpart is taken.
func (t *Tx) CreateUser(u *User) error {
	b := t.tx.Bucket(bUsers)
	if b.Get([]byte(u.Localpart)) != nil {
		return ErrExists
	}
	putJSON(b, []byte(u.Localpart), u)
	return nil
}

// PutUser overwrites a user.
func (t *Tx) PutUser(u *User) { putJSON(t.tx.Bucket(bUsers), []byte(u.Localpart), u) }

// User loads a user by localpart.
func (t *Tx) User(localpart string) (*User, error) {
	var u User
	if err := getJSON(t.tx.Bucket(bUsers).Get([]byte(localpart)), &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// Users calls fn for every local user in localpart order until it returns false.
func (t *Tx) Users(fn func(*User) bool) error {
	return t.tx.Bucket(bUsers).ForEach(func(_, v []byte) error {
		var u User
		if err := json.Unmarshal(v, &u); err != nil {
			return err
		}
		if !fn(&u) {
			return errStop
		}
		return nil
	})
}

// PutDevice stores or replaces a device.
func (t *Tx) PutDevice(d *Device) {
	putJSON(t.tx.Bucket(bDevices), join(d.UserID, d.DeviceID), d)
}

// Device loads one device.
func (t *Tx) Device(userID, deviceID string) (*Device, error) {
	var d Device
	if err := getJSON(t.tx.Bucket(bDevices).Get(join(userID, deviceID)), &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// Devices lists a user's devices in device-ID order.
func (t *Tx) Devices(userID string) ([]*Device, error) {
	var out []*Device
	p := prefix(userID)
	c := t.tx.Bucket(bDevices).Cursor()
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		var d Device
		if err := json.Unmarshal(v, &d); err != nil {
			return nil, err
		}
		out = append(out, &d)
	}
	return out, nil
}

// DeleteDevice removes a device and its tokens.
func (t *Tx) DeleteDevice(userID, deviceID string) error {
	d, err := t.Device(userID, deviceID)
	if err != nil {
		return err
	}
	if d.TokenHash != "" {
		t.DeleteSession(d.TokenHash)
	}
	if d.RefreshHash != "" {
		t.DeleteSession(d.RefreshHash)
	}
	must(t.tx.Bucket(bDevices).Delete(join(userID, deviceID)))
	return nil
}

// PutSession maps a token hash to its session.
func (t *Tx) PutSession(tokenHash string, s *Session) {
	putJSON(t.tx.Bucket(bTokens), []byte(tokenHash), s)
}

// Session resolves a token hash.
func (t *Tx) Session(tokenHash string) (*Session, error) {
	var s Session
	if err := getJSON(t.tx.Bucket(bTokens).Get([]byte(tokenHash)), &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// DeleteSession forgets a token hash.
func (t *Tx) DeleteSession(tokenHash string) {
	must(t.tx.Bucket(bTokens).Delete([]byte(tokenHash)))
}
