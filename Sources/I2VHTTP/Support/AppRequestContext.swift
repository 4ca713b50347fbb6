import Hummingbird
import I2VCore
import I2VGPUNode
import Logging
import NIOCore

/// The request context: Hummingbird's core storage plus the hash of the API key that authenticated the
/// request (set by `APIKeyAuthenticator`).
public struct AppRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var keyHash: String?

    public init(source: Source) {
        self.coreContext = .init(source: source)
        self.keyHash = nil
    }
}
