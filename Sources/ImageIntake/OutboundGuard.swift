import NIOCore
import NIOPosix

/// A URL the service calls on its own initiative (a webhook), after the checks: every address its host
/// resolved to is allowed. The caller connects to one of `addresses` (never looking the name up again), so
/// what was checked is what is reached.
public struct OutboundDestination: Sendable, Equatable {
    public var url: String
    public var scheme: String
    /// The host as the HTTP client sees it (IPv6 brackets removed).
    public var host: String
    public var port: Int
    /// The host is an address literal: there is no name to pin to an address.
    public var isAddressLiteral: Bool
    /// Every address of the host, each checked, in the resolver's preference order.
    public var addresses: [IPAddress]
}

/// Why an outbound URL may not be called.
public enum OutboundRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    /// Not something this service calls: a scheme other than http(s), credentials, an unusable host or port.
    case invalidURL(reason: String)
    /// The host is, or resolves to, an address in a blocked range (`address` nil: refused by its name).
    case blockedAddress(reason: String, address: IPAddress?, range: BlockedRange?)
    /// The host name could not be resolved (now: DNS may answer later).
    case unresolvable(reason: String)

    public var reason: String {
        switch self {
        case .invalidURL(let reason), .blockedAddress(let reason, _, _), .unresolvable(let reason): reason
        }
    }

    public var description: String { reason }
}

/// The image URLs' SSRF rules for any URL the service calls: http(s) only, no credentials, plain host
/// names, and every resolved address outside the blocked ranges (loopback, private, CGNAT and unique-local
/// open only with `allowPrivateHosts`; link-local and the other special ranges never). Resolution runs on
/// a thread pool, never on an event loop or the cooperative pool.
public struct OutboundGuard: Sendable {
    public let allowPrivateHosts: Bool
    /// How the URL is named in reasons, e.g. `webhook_url`.
    let subject: String
    let resolver: HostResolver

    public init(
        allowPrivateHosts: Bool,
        subject: String,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        threadPool: NIOThreadPool = .singleton
    ) {
        self.allowPrivateHosts = allowPrivateHosts
        self.subject = subject
        self.resolver = .system(threadPool: threadPool, eventLoopGroup: eventLoopGroup)
    }

    /// With a resolver of the caller's own (tests: a name whose addresses change between two checks).
    public init(allowPrivateHosts: Bool, subject: String, resolve: @escaping @Sendable (String) async throws -> [IPAddress]) {
        self.allowPrivateHosts = allowPrivateHosts
        self.subject = subject
        self.resolver = HostResolver { host throws(ImageIntakeError) in
            do {
                return try await resolve(host)
            } catch let error as ImageIntakeError {
                throw error
            } catch {
                throw ImageIntakeError(download: .dnsFailure, "DNS lookup failed for \(host) (\(error))")
            }
        }
    }

    /// Whether `address` may be connected to; nil when it may, else the range that forbids it.
    public func blockedRange(of address: IPAddress) -> BlockedRange? {
        guard let range = address.blockedRange else { return nil }
        return allowPrivateHosts && range.isOpenedByPrivateHostAllowance ? nil : range
    }

    /// The checks that need no lookup: scheme, credentials, host and port, and a name that is local by
    /// definition (`localhost`).
    public func checkSyntax(_ url: String) throws(OutboundRefusal) {
        _ = try target(url)
    }

    /// Every check, the lookup included. Run it right before each connection: DNS may answer differently
    /// from one call to the next.
    public func check(_ url: String) async throws(OutboundRefusal) -> OutboundDestination {
        let target = try target(url)
        let addresses: [IPAddress]
        if let literal = target.literal {
            addresses = [literal]
        } else {
            do {
                addresses = try await resolver.resolve(target.host)
            } catch {
                throw .unresolvable(reason: "\(subject): \(Self.withoutDownloadPrefix(error.reason))")
            }
        }
        for address in addresses {
            if let range = blockedRange(of: address) {
                throw .blockedAddress(
                    reason: "\(subject) resolves to a blocked address (\(address), \(range.rawValue))",
                    address: address,
                    range: range
                )
            }
        }
        return OutboundDestination(
            url: target.url,
            scheme: target.scheme,
            host: target.host,
            port: target.port,
            isAddressLiteral: target.literal != nil,
            addresses: addresses
        )
    }

    private func target(_ url: String) throws(OutboundRefusal) -> ImageFetcher.Target {
        let target: ImageFetcher.Target
        do {
            target = try ImageFetcher.parse(url, subject: subject)
        } catch {
            throw .invalidURL(reason: error.reason)
        }
        if !allowPrivateHosts, ImageFetcher.isLocalName(target.host) {
            throw .blockedAddress(reason: "\(subject) names a local host (\(target.host))", address: nil, range: .loopback)
        }
        return target
    }

    private static func withoutDownloadPrefix(_ reason: String) -> String {
        reason.hasPrefix(ImageIntakeError.downloadFailurePrefix) ? String(reason.dropFirst(ImageIntakeError.downloadFailurePrefix.count)) : reason
    }
}
