package store

import "encoding/binary"

// The bucket catalog: every bucket the store uses, named <key>_<value>.
var (
	bMeta               = []byte("meta")
	bUsers              = []byte("localpart_user")
	bDevices            = []byte("userdevice_device")
	bTokens             = []byte("tokenhash_session")
	bEvents             = []byte("eventnid_event")
	bEventIDs           = []byte("eventid_eventnid")
	bStateKeys          = []byte("statekey_statekeynid")
	bStateKeyNIDs       = []byte("statekeynid_statekey")
	bSnapshots          = []byte("snapshotid_snapshot")
	bRooms              = []byte("roomid_room")
	bRoomNIDs           = []byte("roomnid_roomid")
	bTimeline           = []byte("roomnidpos_eventnid")
	bMemberships        = []byte("userroom_membership")
	bAccountData        = []byte("userroomtype_accountdata")
	bAccountStream      = []byte("userpos_accountdatakey")
	bReceipts           = []byte("roomtypeuserthread_receipt")
	bReceiptStream      = []byte("roompos_receiptkey")
	bTxns               = []byte("userdevicetxn_eventid")
	bFilters            = []byte("userfilter_filter")
	bAliases            = []byte("alias_roomid")
	bRoomAliases        = []byte("roomalias_empty")
	bPublicRooms        = []byte("roomid_public")
	bRelations          = []byte("parentrelchild_empty")
	bKV                 = []byte("namespacekey_value") // KV namespace "acme": edge/tlsmode's ACME account key and certificates
	allBuckets          = [][]byte{bMeta, bUsers, bDevices, bTokens, bEvents, bEventIDs, bStateKeys, bStateKeyNIDs, bSnapshots, bRooms, bRoomNIDs, bTimeline, bMemberships, bAccountData, bAccountStream, bReceipts, bReceiptStream, bTxns, bFilters, bAliases, bRoomAliases, bPublicRooms, bRelations, bKV}
	keySchema           = []byte("schema_version")
	keyPos              = []byte("stream_pos")
	keyNextNID          = []byte("next_nid")
	sep            byte = 0xff // separates parts of composite keys; never valid UTF-8
)

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func getU64(b []byte) uint64 {
	if len(b) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// join builds a composite key of string parts separated by sep.
func join(parts ...string) []byte {
	n := len(parts)
	for _, p := range parts {
		n += len(p)
	}
	b := make([]byte, 0, n)
	for i, p := range parts {
		if i > 0 {
			b = append(b, sep)
		}
		b = append(b, p...)
	}
	return b
}

// prefix is join(parts...) followed by a trailing separator, for scans.
func prefix(parts ...string) []byte { return append(join(parts...), sep) }

func nidPos(nid, pos uint64) []byte {
	b := make([]byte, 16)
	binary.BigEndian.PutUint64(b, nid)
	binary.BigEndian.PutUint64(b[8:], pos)
	return b
}

func stateKeyKey(evType, stateKey string) []byte {
	b := make([]byte, 0, len(evType)+1+len(stateKey))
	b = append(b, evType...)
	b = append(b, 0)
	return append(b, stateKey...)
}
