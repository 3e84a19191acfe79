// A stand-in for the few UnityEngine types DvicLog.UnityLogHandler uses, with the same signatures and
// the same call path as Unity's (Debug.Log -> Debug.unityLogger -> its logHandler.LogFormat(type, null,
// "{0}", message)), so that the handler compiles and runs outside Unity in the tests. Not shipped.

namespace UnityEngine
{
    public enum LogType
    {
        Error = 0,
        Assert = 1,
        Warning = 2,
        Log = 3,
        Exception = 4,
    }

    public class Object
    {
    }

    public interface ILogHandler
    {
        void LogFormat(LogType logType, Object context, string format, params object[] args);
        void LogException(System.Exception exception, Object context);
    }

    public interface ILogger : ILogHandler
    {
        ILogHandler logHandler { get; set; }
    }

    sealed class StandInLogger : ILogger
    {
        public ILogHandler logHandler { get; set; }

        public void LogFormat(LogType logType, Object context, string format, params object[] args)
        {
            logHandler.LogFormat(logType, context, format, args);
        }

        public void LogException(System.Exception exception, Object context)
        {
            logHandler.LogException(exception, context);
        }
    }

    /// <summary>What Unity's own handler does with a message: here, one line on stdout.</summary>
    sealed class ConsoleWindow : ILogHandler
    {
        public void LogFormat(LogType logType, Object context, string format, params object[] args)
        {
            System.Console.Out.WriteLine("[" + logType + "] " + string.Format(format, args));
        }

        public void LogException(System.Exception exception, Object context)
        {
            System.Console.Out.WriteLine("[Exception] " + exception.Message);
        }
    }

    public static class Debug
    {
        public static ILogger unityLogger = new StandInLogger { logHandler = new ConsoleWindow() };

        public static void Log(object message) { unityLogger.LogFormat(LogType.Log, null, "{0}", message); }
        public static void LogWarning(object message) { unityLogger.LogFormat(LogType.Warning, null, "{0}", message); }
        public static void LogError(object message) { unityLogger.LogFormat(LogType.Error, null, "{0}", message); }
        public static void LogFormat(string format, params object[] args) { unityLogger.LogFormat(LogType.Log, null, format, args); }
        public static void LogException(System.Exception exception) { unityLogger.LogException(exception, null); }
        public static void Assert(bool condition, object message)
        {
            if (!condition)
                unityLogger.LogFormat(LogType.Assert, null, "{0}", message);
        }
    }
}
