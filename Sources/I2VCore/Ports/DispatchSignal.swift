/// A wake-up for the dispatcher loop: new work, a free slot, a cancel, or a worker becoming ready.
/// Wake-ups coalesce; the loop re-reads the store each time, so none of them carries data. Within one
/// process the use cases wake it directly; across nodes the dispatcher's one-second tick stands in.
public struct DispatchSignal: Sendable {
    private let stream: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    public init() {
        (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    public func wake() { continuation.yield() }
    package func finish() { continuation.finish() }
    package func wakeups() -> AsyncStream<Void> { stream }
}
