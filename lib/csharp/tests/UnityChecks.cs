// The Unity adapter outside Unity (compiled with -define:DVIC_LOG_UNITY against UnityEngineStandIn.cs):
// Debug.Log* calls reach the demo log with their levels and still reach Unity's own handler.

using System;
using DvicLog;
using UnityEngine;

static class UnityChecks
{
    static int Main()
    {
        var handler = UnityLogHandler.Install("unity-demo");
        bool again = ReferenceEquals(handler, UnityLogHandler.Install(" unity-demo "));
        UnityEngine.Debug.Log("hello from Update");
        UnityEngine.Debug.LogWarning("frame took 40 ms");
        UnityEngine.Debug.LogError("camera not found");
        UnityEngine.Debug.LogFormat("score {0} of {1}", 7, 10);
        UnityEngine.Debug.Assert(false, "assertion");
        try
        {
            throw new InvalidOperationException("boom");
        }
        catch (Exception err)
        {
            UnityEngine.Debug.LogException(err);
        }
        handler.Logger.Heartbeat();
        handler.Uninstall();
        UnityEngine.Debug.Log("after uninstall: only in Unity's console");
        Console.Out.WriteLine("path " + handler.Logger.Path + " " + again);
        return 0;
    }
}
