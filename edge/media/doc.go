// Package media is the content repository: uploads, downloads and
// thumbnails of the client-server API's Content Repository module
// (https://spec.matrix.org/v1.11/client-server-api/#content-repository),
// authenticated under /_matrix/client/v1/media and deprecated under
// /_matrix/media/v3.
//
// Files live on disk under the media directory, named by their sha256
// (identical uploads are stored once); what a media ID refers to (hash,
// content type, file name, uploader) is kept in the store's KV.
package media
