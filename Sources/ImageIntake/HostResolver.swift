import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Turns a host name into addresses. The intake resolves every name itself, checks every address, and
/// then makes the HTTP client connect to the checked address (see `ImageFetcher`), so a second lookup
/// that DNS rebinding could answer differently never happens.
struct HostResolver: Sendable {
    /// Resolves `host` (a name or any numeric spelling) to its addresses, in the system's preference order.
    var resolve: @Sendable (_ host: String) async throws(ImageIntakeError) -> [IPAddress]

    /// getaddrinfo(3) on a dedicated thread pool, never on an event loop or the cooperative pool.
    /// It accepts the legacy IPv4 spellings (`127.1`, `0x7f.1`, `017700000001`, `2130706433`) just as
    /// the HTTP client's own lookup would, so those spellings are checked as the addresses they mean.
    /// A lookup that outlives the caller's deadline is abandoned (the caller resumes at once on
    /// cancellation; the blocked thread finishes on its own).
    static func system(threadPool: NIOThreadPool, eventLoopGroup: any EventLoopGroup) -> HostResolver {
        HostResolver { host throws(ImageIntakeError) in
            let outcome: Result<[IPAddress], ImageIntakeError>
            do {
                outcome = try await abandonableRun(on: threadPool, eventLoop: eventLoopGroup.any()) {
                    getaddrinfoAddresses(host)
                }
            } catch is CancellationError {
                throw ImageIntakeError(download: .timedOut, "DNS lookup for \(host) was abandoned")
            } catch {
                throw ImageIntakeError(download: .internal, "the resolver is shut down")
            }
            return try outcome.get()
        }
    }

    /// Blocking lookup.
    static func getaddrinfoAddresses(_ host: String) -> Result<[IPAddress], ImageIntakeError> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Darwin)
        hints.ai_socktype = SOCK_STREAM
        #else
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #endif
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, nil, &hints, &list)
        guard status == 0 else {
            let detail: String
            switch status {
            case EAI_NONAME: detail = ""
            case EAI_AGAIN: detail = " (temporary failure)"
            default: detail = " (\(String(cString: gai_strerror(status))))"
            }
            return .failure(ImageIntakeError(download: .dnsFailure, "DNS lookup failed for \(host)\(detail)"))
        }
        defer { freeaddrinfo(list) }
        var addresses: [IPAddress] = []
        var entry = list
        while let current = entry {
            if let sockaddr = current.pointee.ai_addr {
                switch Int32(current.pointee.ai_family) {
                case AF_INET:
                    let address = sockaddr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
                    addresses.append(.v4(UInt32(bigEndian: address.s_addr)))
                case AF_INET6:
                    let address = sockaddr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_addr }
                    addresses.append(IPAddress(in6: address))
                default:
                    break
                }
            }
            entry = current.pointee.ai_next
        }
        var seen = Set<IPAddress>()
        addresses = addresses.filter { seen.insert($0).inserted }
        guard !addresses.isEmpty else {
            return .failure(ImageIntakeError(download: .dnsFailure, "DNS lookup failed for \(host) (no address)"))
        }
        return .success(addresses)
    }
}

/// Runs blocking work on `threadPool`; returns as soon as the calling task is cancelled, leaving the work
/// to finish in the background (its result is dropped). For work whose result may be abandoned only.
func abandonableRun<T: Sendable>(
    on threadPool: NIOThreadPool,
    eventLoop: any EventLoop,
    _ body: @escaping @Sendable () -> T
) async throws -> T {
    let continuationBox = ContinuationSlot<T>()
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            continuationBox.mutex.withLock { $0 = continuation }
            if Task.isCancelled {
                continuationBox.mutex.withLock { $0.take() }?.resume(throwing: CancellationError())
                return
            }
            threadPool.runIfActive(eventLoop: eventLoop, body).whenComplete { result in
                continuationBox.mutex.withLock { $0.take() }?.resume(with: result)
            }
        }
    } onCancel: {
        continuationBox.mutex.withLock { $0.take() }?.resume(throwing: CancellationError())
    }
}

/// A continuation that is resumed at most once, by whichever comes first.
private final class ContinuationSlot<T: Sendable>: Sendable {
    let mutex = Mutex<CheckedContinuation<T, any Error>?>(nil)
}
