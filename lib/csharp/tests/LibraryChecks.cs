// Scenarios of the C# library that tests/dvic_log/test_dvic_log_csharp.py runs and then checks with the
// Python reference reader:  mono checks.exe SCENARIO [args...]   ($DVIC_LOG_DIR set by the test).
// Compiled together with DvicLog.cs, so that it may also reach the library's internals (encoding,
// the managed fallback) where a scenario needs to.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Text;
using System.Threading;
using DvicLog;

static class LibraryChecks
{
    static void Print(string text)
    {
        Console.Out.Write(text + "\n");
        Console.Out.Flush();
    }

    static string Q(string text)
    {
        return text == null ? "null" : "\"" + text.Replace("\\", "\\\\").Replace("\"", "\\\"") + "\"";
    }

    static string B(bool value) { return value ? "true" : "false"; }

    static int Main(string[] args)
    {
        if (args[0] == "managed")
        {
            FileSystem.ForceManaged = true; // the fallback without libc, on this Linux machine
            args = args.Skip(1).ToArray();
        }
        string scenario = args[0];
        switch (scenario)
        {
            case "filesystem": Print(FileSystem.Get().Kind); break;
            case "header": Header(); break;
            case "records": Records(); break;
            case "same-name": SameName(); break;
            case "bad-names": BadNames(); break;
            case "bad-env": BadEnv(); break;
            case "rotate": Rotate(int.Parse(args[1])); break;
            case "big": Big(); break;
            case "vanish": Vanish(); break;
            case "threads": Threads(); break;
            case "heartbeat": Heartbeats(); break;
            case "reopen": Reopen(); break;
            case "full-disk": FullDisk(); break;
            case "exit": Exit(); break;
            case "kill": Kill(); break;
            case "symlink": Symlink(args[1]); break;
            case "encode": Encode(); break;
            case "bench": Bench(int.Parse(args[1]), int.Parse(args[2])); break;
            default:
                Console.Error.WriteLine("unknown scenario " + scenario);
                return 2;
        }
        return 0;
    }

    static void Header()
    {
        var log = Logger.Get("robot-arm");
        int pid;
        using (var me = Process.GetCurrentProcess())
            pid = me.Id;
        Print("{\"path\": " + Q(log.Path) + ", \"token\": " + Q(log.Token) + ", \"pid\": " + pid +
              ", \"argv\": [" + string.Join(", ", Array.ConvertAll(Environment.GetCommandLineArgs(), Q)) + "]}");
    }

    static void Records()
    {
        var log = Logger.Get("demo");
        log.Debug("d");
        log.Info("i");
        log.Warning("w");
        log.Error("e");
        log.Critical("c");
        log.Log(25, "custom level");
        log.Log(Level.Warning, "via Log");
        log.Child("axis").Info("from a child");
        try
        {
            throw new InvalidOperationException("boom");
        }
        catch (Exception err)
        {
            log.Error("failed", err);
        }
        log.Write(Level.Info, new byte[] { 0x61, 0xff, 0x62 });
        log.Write(Level.Error, "explicit", "Traceback\n  here");
        log.Info(null);
        Print(log.Path);
    }

    static void SameName()
    {
        var a = Logger.Get("alpha");
        var again = Logger.Get(" alpha ");
        var b = Logger.Get("beta");
        a.Info("1");
        again.Info("2");
        b.Info("3");
        Print(B(ReferenceEquals(a, again)) + " " + B(a.Path == again.Path) + " " + B(a.Path != b.Path));
    }

    static void BadNames()
    {
        foreach (string name in new[] { "", "   ", "a\nb", "nul\0", new string('x', 201), null })
        {
            try
            {
                Logger.Get(name);
                Print("accepted");
            }
            catch (ConfigException err)
            {
                Print("ConfigException " + err.Message);
            }
        }
        try { Logger.Get("opt", new LoggerOptions { MaxBytes = 10 }); }
        catch (ConfigException err) { Print(err.Message); }
        try { Logger.Get("opt2", new LoggerOptions { Directory = "/nonexistent/dir" }); }
        catch (ConfigException err) { Print(err.Message); }
    }

    static void BadEnv()
    {
        var log = Logger.Get("x");
        for (int i = 0; i < 100; i++)
            log.Info("r" + i);
        Print(B(log.Heartbeat()) + " " + (log.Path ?? "null"));
    }

    static void Rotate(int count)
    {
        var log = Logger.Get("rotating");
        for (int i = 0; i < count; i++)
            log.Info("record " + i.ToString("0000") + " " + new string('x', 40));
        Print(log.Path);
    }

    static void Big()
    {
        var log = Logger.Get("big");
        log.Info(new string('é', 10000));
        log.Info("after");
        Print(log.Path);
    }

    static void Vanish()
    {
        var log = Logger.Get("vanishing");
        log.Info("before");
        string file = log.Path;
        File.Delete(file);
        var deadline = DateTime.UtcNow.AddSeconds(10);
        for (int i = 0; !File.Exists(file) && DateTime.UtcNow < deadline; i++)
            log.Info("while gone " + i);
        log.Info("after");
        Print(B(file == log.Path) + " " + file);
    }

    static void Threads()
    {
        var main = Logger.Get("pool");
        main.Info("main first");
        var threads = new List<Thread>();
        for (int t = 0; t < 4; t++)
        {
            int id = t;
            var thread = new Thread(() =>
            {
                var log = Logger.Get("pool"); // the same logger, the same file
                for (int i = 0; i < 500; i++)
                    log.Info("worker " + id + " record " + i + " " + new string('y', 30));
            });
            thread.Start();
            threads.Add(thread);
        }
        for (int i = 0; i < 500; i++)
            main.Info("main record " + i);
        foreach (var thread in threads)
            thread.Join();
        main.Info("main last");
        Print(main.Path);
    }

    static void Heartbeats()
    {
        var log = Logger.Get("beating");
        bool first = log.Heartbeat();
        bool second = log.Heartbeat();
        var watch = Stopwatch.StartNew();
        bool third = false;
        while (!third && watch.ElapsedMilliseconds < 5000)
            third = log.Heartbeat();
        Print(B(first) + " " + B(second) + " " + B(third) + " " + B(watch.ElapsedMilliseconds >= 990) + " " + log.Path);
    }

    static void Reopen()
    {
        var log = Logger.Get("reopen");
        log.Info("one");
        string before = log.Path;
        log.Close();
        log.Info("two");
        log.Heartbeat();
        Print(B(before == log.Path) + " " + log.Path);
    }

    static void FullDisk()
    {
        var log = Logger.Get("full");
        Print(log.Path);
        Console.In.Read();
        var ok = new List<string>();
        for (int i = 0; i < 100; i++)
            ok.Add(B(log.Info("record " + i.ToString("000") + " " + new string('z', 40))));
        byte[] data = File.ReadAllBytes(log.Path);
        bool torn = data.Length > 0 && data[data.Length - 1] != (byte)'\n';
        Print("{\"ok\": [" + string.Join(", ", ok) + "], \"torn\": " + B(torn) + "}");
        Console.In.Read();
        log.Info("space is back");
    }

    static void Exit()
    {
        var log = Logger.Get("exiting");
        AppDomain.CurrentDomain.ProcessExit += (sender, e) => log.Warning("exit handler");
        log.Info("bye");
        Environment.Exit(3);
    }

    static void Kill()
    {
        var log = Logger.Get("killed");
        for (int i = 0; i < 1000; i++)
            log.Info("line " + i);
        Process.GetCurrentProcess().Kill();
    }

    static void Symlink(string link)
    {
        try
        {
            FileSystem.Get().Create(link, Encoding.ASCII.GetBytes("{}\n"));
            Print("created");
        }
        catch (FsException err)
        {
            Print(err.Code);
        }
    }

    /// <summary>stdin: {"lines": [...], "cuts": [...]} of records; stdout: the encoded lines, base64.</summary>
    static void Encode()
    {
        var input = (Dictionary<string, object>)MiniJson.Parse(Console.In.ReadToEnd());
        var outLines = new List<string>();
        foreach (Dictionary<string, object> c in (List<object>)input["lines"])
            outLines.Add(Q(Convert.ToBase64String(Json.RecordBytes(ToRecord(c)))));
        var cuts = new List<string>();
        foreach (Dictionary<string, object> c in (List<object>)input["cuts"])
            cuts.Add(Q(Convert.ToBase64String(Json.FitRecord(ToRecord(c), MiniJson.Num(c, "max_line", 0)))));
        Print("{\"out\": [" + string.Join(", ", outLines) + "], \"cut\": [" + string.Join(", ", cuts) + "]}");
    }

    static Record ToRecord(Dictionary<string, object> c)
    {
        long ms = (long)Math.Round((double)c["ts"] * 1000);
        Level level = MiniJson.Str(c, "level") == "DEBUG" ? Level.Debug : MiniJson.Str(c, "level") == "INFO" ? Level.Info : Level.Error;
        return new Record(ms, level, MiniJson.Str(c, "msg"), MiniJson.Str(c, "logger"), MiniJson.Str(c, "exc"));
    }

    /// <summary>Records per second for `count` records of about `size` bytes of message, best of 3 runs.</summary>
    static void Bench(int count, int size)
    {
        var log = Logger.Get("bench-csharp");
        string pad = new string('x', Math.Max(0, size - 18));
        for (int i = 0; i < 2000; i++)
            log.Info("warm up " + i); // let the JIT compile the write path first
        double best = 0;
        for (int round = 0; round < 3; round++)
        {
            var watch = Stopwatch.StartNew();
            for (int i = 0; i < count; i++)
                log.Info("sensor reading " + (i % 1000).ToString("000") + " " + pad);
            best = Math.Max(best, count / watch.Elapsed.TotalSeconds);
        }
        Print(((long)best).ToString());
    }
}
