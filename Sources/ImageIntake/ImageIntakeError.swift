/// Why an image could not be used. Every failure of the intake is one of these; the app answers it with
/// HTTP 400 and `reason`, and counts it in metrics by `cause.label`.
public struct ImageIntakeError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A small, stable set of causes: safe to use as a metrics label.
    public enum Cause: String, Sendable, Equatable, Hashable, CaseIterable {
        /// The URL cannot be fetched as given (bad host, port, scheme of a redirect target, ...).
        case invalidURL
        /// The URL carries a user name or password.
        case credentialsInURL
        /// The host is, or resolves to, an address in a blocked range (loopback, private, link-local, ...).
        case blockedAddress
        /// The host name could not be resolved.
        case dnsFailure
        /// The server refused the connection.
        case connectionRefused
        /// Connecting, or the whole download, took longer than allowed.
        case timedOut
        /// The final response was not a 2xx.
        case httpStatus
        /// The body is larger than the byte cap.
        case tooLarge
        /// More redirects than allowed.
        case tooManyRedirects
        /// The TLS handshake failed (certificate, protocol).
        case tls
        /// Any other network failure (reset, unreachable network, malformed HTTP, ...).
        case network
        /// The bytes are not an image in a supported format, or they are corrupt or truncated.
        case notAnImage
        /// The header announces more pixels than allowed (refused before decoding).
        case tooManyPixels
        /// The aspect ratio is beyond what the model accepts (auto size only).
        case aspectRatio
        /// A failure of the service itself (image library, thread pool shut down).
        case `internal`

        /// The metrics label, e.g. `blockedAddress`.
        public var label: String { rawValue }
    }

    public var cause: Cause
    /// A concrete, user-facing sentence, e.g. "image download failed: HTTP status 404".
    public var reason: String

    public init(_ cause: Cause, _ reason: String) {
        self.cause = cause
        self.reason = reason
    }

    /// A failure of the download itself (resolving, connecting, the response, redirects, the byte cap):
    /// its reason always starts with "image download failed: ", then names the cause, so a client can
    /// tell a source it should fix from an image it should replace.
    init(download cause: Cause, _ detail: String) {
        self.init(cause, Self.downloadFailurePrefix + detail)
    }

    public static let downloadFailurePrefix = "image download failed: "

    public var description: String { "\(cause.rawValue): \(reason)" }
}

extension Duration {
    /// "15 s", "1.5 s", "250 ms": for reasons shown to users.
    var humanReadable: String {
        let (seconds, attoseconds) = components
        if attoseconds == 0 {
            return "\(seconds) s"
        }
        let milliseconds = seconds * 1000 + attoseconds / 1_000_000_000_000_000
        if milliseconds < 1000 {
            return "\(milliseconds) ms"
        }
        if milliseconds % 100 == 0 {
            return "\(milliseconds / 1000).\(milliseconds % 1000 / 100) s"
        }
        return "\(milliseconds) ms"
    }

    /// Seconds as a Double, for logs.
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
