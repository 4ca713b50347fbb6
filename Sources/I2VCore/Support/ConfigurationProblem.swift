/// A configuration the service cannot run with; the message says what to set. The server prints it and
/// exits instead of starting half-configured.
public struct ConfigurationProblem: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
