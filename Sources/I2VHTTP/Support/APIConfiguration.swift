import Foundation

/// What the two API surfaces need to know of the service's configuration.
public struct APIConfiguration: Sendable {
    /// The largest JSON body (or multipart field other than the image) a request may carry.
    public var maxBodyBytes: Int
    /// The largest image a request may carry or link to.
    public var imageMaxBytes: Int
    /// The base of the video URLs in answers.
    public var publicURL: String
    /// How often an idle status stream sends a comment so proxies keep it open.
    public var streamKeepAlive: Duration
    public var videosDirectory: URL
    /// How long a finished video stays downloadable.
    public var videoTTL: Duration
    /// Where an upload's bytes past the first 64 KiB wait while it arrives.
    public var uploadSpoolDirectory: URL

    public init(
        maxBodyBytes: Int, imageMaxBytes: Int, publicURL: String, streamKeepAlive: Duration, videosDirectory: URL,
        videoTTL: Duration, uploadSpoolDirectory: URL
    ) {
        self.maxBodyBytes = maxBodyBytes
        self.imageMaxBytes = imageMaxBytes
        self.publicURL = publicURL
        self.streamKeepAlive = streamKeepAlive
        self.videosDirectory = videosDirectory
        self.videoTTL = videoTTL
        self.uploadSpoolDirectory = uploadSpoolDirectory
    }
}
