/// Limits of the image intake.
public struct ImageIntakeConfiguration: Sendable, Equatable {
    /// Bounds the whole download: DNS lookup, every connection, every redirect and the body
    /// (`I2V_IMAGE_TIMEOUT_SECONDS`, default 15 s).
    public var timeout: Duration
    /// Bounds each TCP (and TLS) connection set-up; at most `timeout`.
    public var connectTimeout: Duration
    /// The largest body accepted, enforced while streaming (`I2V_IMAGE_MAX_BYTES`, default 20 MiB).
    public var maxBytes: Int
    /// The most pixels (width × height) accepted, checked from the header before anything is decoded.
    public var maxPixels: Int
    /// The most redirects followed; each target is checked again like the first URL.
    public var maxRedirects: Int
    /// Allow hosts that resolve to loopback, private (RFC 1918), CGNAT and unique-local addresses
    /// (`I2V_ALLOW_PRIVATE_IMAGE_HOSTS`; tests and LANs only). Link-local (the cloud metadata address)
    /// and the other special ranges stay blocked.
    public var allowPrivateHosts: Bool
    /// zlib level of the prepared PNG (0–9; lossless at every level). The PNG is a local hand-off to
    /// the worker, so the default is 0 (stored): about 7 ms for an 832×480 photo against about 60 ms at
    /// levels 1–6, which save only about 10% on photos.
    public var pngCompression: Int

    public static let defaultTimeout: Duration = .seconds(15)
    public static let defaultMaxBytes = 20 * 1024 * 1024
    public static let defaultMaxPixels = 40_000_000
    public static let defaultMaxRedirects = 3

    public init(
        timeout: Duration = defaultTimeout,
        connectTimeout: Duration? = nil,
        maxBytes: Int = defaultMaxBytes,
        maxPixels: Int = defaultMaxPixels,
        maxRedirects: Int = defaultMaxRedirects,
        allowPrivateHosts: Bool = false,
        pngCompression: Int = 0
    ) {
        self.timeout = timeout
        self.connectTimeout = connectTimeout ?? min(.seconds(5), timeout)
        self.maxBytes = maxBytes
        self.maxPixels = maxPixels
        self.maxRedirects = maxRedirects
        self.allowPrivateHosts = allowPrivateHosts
        self.pngCompression = pngCompression
    }
}
