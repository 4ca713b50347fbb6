import Configuration
import Foundation
import Hummingbird
import I2VApp

@main
struct I2VServer {
    static let usage = """
        usage: i2v-server [serve]

          serve   run the API, the queue and the inference worker in one process tree (default)
          api     API only, for multi-node deployments on PostgreSQL (not built yet)
          worker  inference workers only, for multi-node deployments on PostgreSQL (not built yet)

        Configuration is read from I2V_* environment variables; see README.md.
        """

    static func main() async throws {
        let command = CommandLine.arguments.dropFirst().first ?? "serve"
        switch command {
        case "serve":
            break
        case "-h", "--help", "help":
            print(usage)
            return
        case "api", "worker":
            FileHandle.standardError.write(Data("i2v-server \(command): the multi-node roles are not built yet; use `serve` (on SQLite or PostgreSQL)\n".utf8))
            exit(2)
        default:
            FileHandle.standardError.write(Data("unknown command \(command)\n\n\(usage)\n".utf8))
            exit(2)
        }
        let reader = ConfigReader(providers: [EnvironmentVariablesProvider()])
        do {
            let app = try await buildApplication(reader: reader)
            try await app.runService()
        } catch let problem as ConfigurationProblem {
            FileHandle.standardError.write(Data("i2v-server: \(problem)\n".utf8))
            exit(1)
        }
    }
}
